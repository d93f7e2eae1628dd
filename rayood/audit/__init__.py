"""Audits: has a corpus drifted from a reference corpus, in scores and in backbone features?"""
