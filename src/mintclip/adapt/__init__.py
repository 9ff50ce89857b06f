"""Test-time adaptation methods, one file each, and the pieces they share."""

from .base import Method, MethodConfig, available_methods, build_method, register

__all__ = ["Method", "MethodConfig", "available_methods", "build_method", "register"]
