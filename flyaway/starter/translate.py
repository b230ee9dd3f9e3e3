"""``flyaway translate``: a fly.toml as a deploy section to paste into a plan, with what does not carry over."""

from __future__ import annotations

import yaml

from flyaway.activities.deploy.fly_toml import missing_fields, read_fly_toml, translate
from flyaway.models.deploy import PLATFORM_NAMES, Platform


def translation_text(path: str, platform: Platform) -> str:
    """YAML of the deploy section, then comments: the fields still to give and the settings left behind."""
    translation = translate(read_fly_toml(path), platform)
    section = {"deploy": {"platform": platform, **translation.settings}}
    lines = [yaml.safe_dump(section, sort_keys=False, default_flow_style=False).rstrip()]
    missing = missing_fields(translation)
    if missing:
        lines.append(f"# also give: {', '.join(missing)}")
    if translation.unsupported:
        lines.append(f"# no equivalent on {PLATFORM_NAMES[platform]}:")
        lines += [f"#   - {item}" for item in translation.unsupported]
    return "\n".join(lines)
