"""Pareto fronts of multi-objective studies."""

from __future__ import annotations


def dominates(a: list[float], b: list[float], modes: list[str]) -> bool:
    """True when `a` is at least as good as `b` in every objective and better in one."""
    at_least = all((x >= y) if m == "max" else (x <= y) for x, y, m in zip(a, b, modes, strict=True))
    better = any((x > y) if m == "max" else (x < y) for x, y, m in zip(a, b, modes, strict=True))
    return at_least and better


def pareto_front(points: list[tuple[int, list[float]]], modes: list[str]) -> list[tuple[int, list[float]]]:
    """The non-dominated points, in their original order."""
    return [p for p in points if not any(dominates(q[1], p[1], modes) for q in points if q is not p)]
