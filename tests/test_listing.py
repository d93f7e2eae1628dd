"""Listing a local input directory as a hostile user could shape it (issue 12, items 3, 4 and 9): directory
links (loops, self-links), file links out of the input, names that are not UTF-8, hidden names. Each is left
out and counted; none multiplies rows, hangs planning or stops the job."""

import os

from rayood.config import CorpusSettings
from rayood.data.sources import HIDDEN, plan_source
from rayood.storage import LINK_NOT_FOLLOWED, NAME_NOT_UTF8
from tests.images import good_images


def test_links_undecodable_and_hidden_names_are_left_out_and_counted(tmp_path):
    root = tmp_path / "corpus"
    (root / "sub").mkdir(parents=True)
    png = good_images()["rgb.png"]
    for name in ("a.png", "b.png", "sub/c.png"):
        (root / name).write_bytes(png)
    (tmp_path / "secret.png").write_bytes(png)
    (root / "loop").symlink_to("..")  # would repeat the tree (and its parent) forever
    for name in ("self1", "self2", "self3"):
        (root / name).symlink_to(name)  # self-links: a planner that follows them hangs
    (root / "passwd.png").symlink_to(tmp_path / "secret.png")  # a file link out of the input root
    (root / "dangling.png").symlink_to(root / "gone.png")
    (root / "alias.png").symlink_to(root / "sub" / "c.png")  # a file link inside: read, like a file
    os.close(os.open(os.fsencode(root) + b"/caf\xe9.png", os.O_CREAT | os.O_WRONLY))  # Latin-1 name
    (root / ".hidden.png").write_bytes(png)

    plan = plan_source(str(root), CorpusSettings())
    assert plan.kind == "images" and plan.rows == 4
    assert plan.paths == tuple(str(root / n) for n in ("a.png", "alias.png", "b.png", "sub/c.png"))
    reasons = sorted(why for why, _ in plan.left_out)
    assert reasons == sorted([HIDDEN, *[LINK_NOT_FOLLOWED] * 6, NAME_NOT_UTF8])
    undecodable = next(name for why, name in plan.left_out if why == NAME_NOT_UTF8)
    assert undecodable == str(root) + "/caf\\xe9.png" and undecodable.isprintable()
