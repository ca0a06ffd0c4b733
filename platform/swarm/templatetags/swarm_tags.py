"""Template helpers for swarm and project pages: short ages ("12 s ago"), byte sizes, counts ("8,395,776")."""

from __future__ import annotations

from datetime import datetime

from django import template
from django.utils import timezone

register = template.Library()


def format_age(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    if seconds < 90:
        return f"{seconds:.0f} s ago"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min ago"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.0f} h ago"
    return f"{seconds / 86400:.0f} days ago"


@register.filter
def age(moment: datetime | None) -> str:
    """How long ago `moment` was, in the coarsest unit that still tells freshness apart."""
    if moment is None:
        return "never"
    return format_age(max(0.0, (timezone.now() - moment).total_seconds()))


@register.filter
def age_s(seconds: float | None) -> str:
    return format_age(seconds)


@register.filter
def bytes_human(value: int | None) -> str:
    size = float(value or 0)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TB"


@register.filter
def thousands(value: int | None) -> str:
    """A count with thousands separators, as the project form's script writes it."""
    return f"{int(value or 0):,}"
