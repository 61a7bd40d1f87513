"""networks for medssl_monai."""

from __future__ import annotations
