"""Test-time adaptation methods, one file each, and the pieces they share."""

from .base import Diagnostics, Method, MethodConfig, Prediction, available_methods, build_method, register

__all__ = ["Diagnostics", "Method", "MethodConfig", "Prediction", "available_methods", "build_method", "register"]
