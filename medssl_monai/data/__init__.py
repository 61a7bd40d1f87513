"""Readers that turn a dataset on disk into a MONAI datalist, video IO, the decoded-clip cache and the
synthetic generator."""

from __future__ import annotations
