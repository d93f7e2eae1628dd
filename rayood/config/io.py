"""Where a job runs and what it reads: the Ray cluster, S3-compatible stores, and the corpus layout."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from rayood.config.base import Strict

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff")

OBJECT_STORE_MINIMUM_BYTES = 75 * 2**20  # Ray refuses a smaller object store (ray_constants)


class RaySettings(Strict):
    """Where the jobs run.

    ``address: null`` connects to the cluster a job was submitted to (``RAY_ADDRESS``), or starts a local
    cluster in-process when there is none.
    """

    address: str | None = None
    num_cpus: int | None = Field(default=None, ge=1, description="only for a local cluster started in-process")
    object_store_memory: int | None = Field(
        default=None,
        ge=OBJECT_STORE_MINIMUM_BYTES,
        description="bytes of shared memory for Ray's object store, only for a local cluster started in-process "
        "(Ray's default: 30% of RAM). The scoring actor's resident memory grows by the store pages its input "
        "batches pass through, toward this bound, over a long run (BENCHMARKS.md)",
    )
    verbose: bool = Field(
        default=False,
        description="Ray's own console output (worker logs, Ray Data's progress blocks, its INFO lines); otherwise "
        "they stay in the session's log files, whose path the job prints (--verbose)",
    )


class S3Settings(Strict):
    """Any S3-compatible store. Unset fields fall back to the AWS environment variables."""

    endpoint_url: str | None = Field(default=None, description="e.g. http://127.0.0.1:9000; env AWS_ENDPOINT_URL")
    region: str | None = Field(default=None, description="env AWS_REGION / AWS_DEFAULT_REGION")
    anonymous: bool = False
    retries: int = Field(default=5, ge=0)
    client: Literal["pyarrow", "s3fs"] = Field(
        default="pyarrow",
        description="pyarrow's native S3 client (faster: BENCHMARKS.md, 's3:// clients'), or s3fs (botocore's "
        "credential chain and config files, named profiles, requester-pays buckets)",
    )
    profile: str | None = Field(default=None, description="a named profile of the AWS config files (client: s3fs)")
    requester_pays: bool = Field(default=False, description="read requester-pays buckets (client: s3fs)")

    @model_validator(mode="after")
    def _s3fs_options_need_s3fs(self) -> S3Settings:
        used = [name for name in ("profile", "requester_pays") if getattr(self, name)]
        if used and self.client != "s3fs":
            raise ValueError(
                f"{' and '.join(used)} need client: s3fs (pyarrow's client takes a profile from AWS_PROFILE)"
            )
        return self

    @field_validator("endpoint_url")
    @classmethod
    def _no_credentials(cls, value: str | None) -> str | None:
        if value and "@" in value.split("://", 1)[-1].split("/", 1)[0]:
            raise ValueError(
                "must not hold credentials (user:password@); use AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY"
            )
        return value


class CorpusSettings(Strict):
    """How a corpus is laid out: image files, or Parquet with an image-bytes column."""

    image_column: str = "image"
    id_column: str = "id"
    label_column: str = "label"
    file_extensions: tuple[str, ...] = IMAGE_EXTENSIONS

    @field_validator("file_extensions")
    @classmethod
    def _lower_no_dot(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(ext.lower().lstrip(".") for ext in value)
