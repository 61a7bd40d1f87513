"""Pretraining methods: modules that wrap a bundle's ``network_def`` encoder with heads, teachers and losses."""

from __future__ import annotations
