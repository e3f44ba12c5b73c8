"""Numbers as the reports print them: percentages, intervals, signed points, p-values, rounded counts."""
from __future__ import annotations

MINUS = "\u2212"


def pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def ci_text(ci) -> str:
    return "" if ci is None else f"[{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"


def signed(x: float, decimals: int = 1) -> str:
    text = f"{x:+.{decimals}f}"
    if float(text) == 0:
        text = f"{0:+.{decimals}f}"  # no "-0.0"
    return text.replace("-", MINUS)


def points(diff: float, margin_points: float = 2.0) -> str:
    """Signed points, with a second decimal where one decimal would hide which side of the margin we are."""
    pts = diff * 100
    one = round(pts, 1)
    if abs(one) == margin_points and round(pts, 9) != one:
        return signed(pts, 2)
    return signed(pts, 1)


def format_p(p: float) -> str:
    """'p = 0.041' / 'p < 0.001' (two significant figures)."""
    if p < 0.001:
        return "p < 0.001"
    if p >= 0.995:
        return "p = 1.00"
    if p >= 0.1:
        return f"p = {p:.2f}"
    text = f"{float(f'{p:.2g}'):g}"
    if float(text) == 0.05 and p != 0.05:
        text = f"{float(f'{p:.3g}'):g}"  # 0.0496 must not read as the 0.05 threshold
    return f"p = {text}"


def about(n: int) -> str:
    """Two significant figures for "about N" (2,941 -> 2,900)."""
    if n < 100:
        return f"{n:,}"
    digits = len(str(n)) - 2
    return f"{int(round(n, -digits)):,}"


def level(alpha: float | None) -> str:
    """The confidence level of intervals made at `alpha`, as every label prints it: 0.05 -> '95%'.
    None (results written before the level was recorded) is the default 0.05."""
    return f"{100 * (1 - (0.05 if alpha is None else alpha)):g}%"
