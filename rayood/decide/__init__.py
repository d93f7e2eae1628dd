"""Decisions over a whole report: which images to keep, with a guarantee on the mistakes."""
