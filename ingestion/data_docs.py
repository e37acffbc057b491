"""Data Docs that open with no network.

GX renders its pages with links to public CDNs (Bootstrap, bootstrap-table, jQuery,
Font Awesome, Vega); on a machine without internet they show two "Clear Filters" buttons
and nothing else. `bundle(site)` keeps GX's own pages and points each of those links at a
copy under the site's `static/vendor/`, taken from the same libraries at the same
versions, pinned in `ingestion/data_docs_assets/package.json` (installed by `make
install` with `npm ci`). Where they are not installed, the pages keep their CDN links and
a warning says how to install them.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from pathlib import Path

log = logging.getLogger(__name__)

ASSETS = Path(__file__).resolve().parent / "data_docs_assets" / "node_modules"
VENDOR = Path("static") / "vendor"

# Each CDN address GX's templates use -> the same file in the pinned npm package.
CDN_FILES = {
    "https://maxcdn.bootstrapcdn.com/bootstrap/4.3.1/css/bootstrap.min.css":
        "bootstrap/dist/css/bootstrap.min.css",
    "https://stackpath.bootstrapcdn.com/bootstrap/4.3.1/js/bootstrap.min.js":
        "bootstrap/dist/js/bootstrap.min.js",
    "https://code.jquery.com/jquery-3.7.1.min.js": "jquery/dist/jquery.min.js",
    "https://cdnjs.cloudflare.com/ajax/libs/popper.js/1.12.9/umd/popper.min.js":
        "popper.js/dist/umd/popper.min.js",
    "https://cdnjs.cloudflare.com/ajax/libs/bootstrap-datepicker/1.9.0/css/bootstrap-datepicker.min.css":
        "bootstrap-datepicker/dist/css/bootstrap-datepicker.min.css",
    "https://cdnjs.cloudflare.com/ajax/libs/bootstrap-datepicker/1.9.0/js/bootstrap-datepicker.min.js":
        "bootstrap-datepicker/dist/js/bootstrap-datepicker.min.js",
    "https://cdnjs.cloudflare.com/ajax/libs/font-awesome/6.6.0/css/all.min.css":
        "@fortawesome/fontawesome-free/css/all.min.css",
    "https://cdn.jsdelivr.net/npm/@forevolve/bootstrap-dark@1.1.0/dist/css/bootstrap-prefers-dark.css":
        "@forevolve/bootstrap-dark/dist/css/bootstrap-prefers-dark.css",
    "https://unpkg.com/bootstrap-table@1.19.1/dist/bootstrap-table.min.css":
        "bootstrap-table/dist/bootstrap-table.min.css",
    "https://unpkg.com/bootstrap-table@1.19.1/dist/bootstrap-table.min.js":
        "bootstrap-table/dist/bootstrap-table.min.js",
    "https://unpkg.com/bootstrap-table@1.19.1/dist/extensions/filter-control/bootstrap-table-filter-control.min.js":
        "bootstrap-table/dist/extensions/filter-control/bootstrap-table-filter-control.min.js",
    "https://unpkg.com/bootstrap-table@1.19.0/dist/extensions/filter-control/bootstrap-table-filter-control.css":
        "bootstrap-table-1.19.0/dist/extensions/filter-control/bootstrap-table-filter-control.css",
    "https://unpkg.com/bootstrap-table@1.19.0/dist/extensions/filter-control/bootstrap-table-filter-control.min.css":
        "bootstrap-table-1.19.0/dist/extensions/filter-control/bootstrap-table-filter-control.min.css",
    "https://cdn.jsdelivr.net/npm/vega@5": "vega/build/vega.min.js",
    "https://cdn.jsdelivr.net/npm/vega-lite@5": "vega-lite/build/vega-lite.min.js",
    "https://cdn.jsdelivr.net/npm/vega-embed@6": "vega-embed/build/vega-embed.min.js",
}  # fmt: skip
# Folders that copied files refer to by relative path (Font Awesome's CSS: its fonts).
FOLDERS = ("@fortawesome/fontawesome-free/webfonts",)
# GX's logo comes from an S3 bucket of theirs; the site has its own copy.
LOGO = re.compile(
    r"https://great-expectations-web-assets\.s3\.[a-z0-9-]+\.amazonaws\.com/"
    r"logo-long\.png\?d=[^\"']*"
)
LINK = re.compile(r"""(?P<attr>(?:src|href)=["'])(?P<url>https://[^"']+)(?P<end>["'])""")


def installed() -> bool:
    return all((ASSETS / path).is_file() for path in CDN_FILES.values())


def bundle(site: Path) -> int:
    """Point every page of the Data Docs `site` at local copies of its CDN files; returns
    how many links were changed (0, with a warning, when the assets are not installed)."""
    site = Path(site)
    if not installed():
        log.warning(
            "Data Docs in %s keep their CDN links (they need the internet to show results): "
            "install the bundled assets with `make install` (npm ci in %s)",
            site,
            ASSETS.parent,
        )
        return 0
    for path in CDN_FILES.values():
        _copy(ASSETS / path, site / VENDOR / path)
    for folder in FOLDERS:
        shutil.copytree(ASSETS / folder, site / VENDOR / folder, dirs_exist_ok=True)
    changed = 0
    for page in site.rglob("*.html"):
        vendor = Path(os.path.relpath(site / VENDOR, page.parent)).as_posix()
        logo = Path(os.path.relpath(site / "static" / "images" / "logo-long.png", page.parent))
        text = page.read_text(encoding="utf-8")

        def local(match: re.Match[str], vendor: str = vendor) -> str:
            nonlocal changed
            path = CDN_FILES.get(match["url"])
            if path is None:
                return match[0]  # a plain link (GX's website): not a page asset
            changed += 1
            return f"{match['attr']}{vendor}/{path}{match['end']}"

        new = LINK.sub(local, text)
        new, logos = LOGO.subn(logo.as_posix(), new)
        changed += logos
        if new != text:
            page.write_text(new, encoding="utf-8")
    return changed


def _copy(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
