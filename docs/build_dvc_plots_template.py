"""Write docs/dvc_plots_template.html: DVC's plots page with Vega inlined, so that `dvc plots
show` / `dvc plots diff` draw their charts offline (DVC's own page loads Vega from a CDN).

The versions are those dvc-render (1.0.2, with DVC 3.67) loads, so its specs render as upstream
intends. Needs `npm` and the npm registry; run from the repository root:

    python docs/build_dvc_plots_template.py
"""

import re
import subprocess
import tarfile
import tempfile
from pathlib import Path

PACKAGES = {  # npm package@version: its minified browser build
    "vega@5.20.2": "package/build/vega.min.js",
    "vega-lite@5.2.0": "package/build/vega-lite.min.js",
    "vega-embed@6.18.2": "package/build/vega-embed.min.js",
}
OUT = Path(__file__).with_name("dvc_plots_template.html")
# {plot_divs} and {refresh_tag} are dvc-render's placeholders; {scripts} (its CDN <script>
# tags) is deliberately absent
PAGE = """<!DOCTYPE html>
<!-- DVC plots page with Vega inlined ({versions}; BSD-3-Clause, University of Washington
     Interactive Data Lab). Written by docs/build_dvc_plots_template.py; do not edit. -->
<html>
<head>
    <meta charset="utf-8">
    {{refresh_tag}}
    <title>DVC Plot</title>
{scripts}
    <style>
        table {{
            border-spacing: 15px;
        }}
    </style>
</head>
<body>
    {{plot_divs}}
</body>
</html>
"""


def main() -> None:
    scripts = []
    with tempfile.TemporaryDirectory() as tmp:
        for package, member in PACKAGES.items():
            out = subprocess.run(["npm", "pack", "--silent", package], cwd=tmp, check=True,
                                 capture_output=True, text=True).stdout  # fmt: skip
            with tarfile.open(Path(tmp, out.strip().splitlines()[-1])) as tgz:
                code = tgz.extractfile(member).read().decode()
            # no source map: nothing for a browser to fetch
            code = re.sub(r"\n?//# sourceMappingURL=\S+\s*$", "", code)
            if "</script" in code or re.search(r"\{(plot_divs|refresh_tag|scripts)\}", code):
                raise SystemExit(f"{package}: cannot be inlined as is")
            scripts.append(f"    <script>/* {package} */\n{code}\n    </script>")
    OUT.write_text(PAGE.format(versions=", ".join(PACKAGES), scripts="\n".join(scripts)))
    print(f"wrote {OUT} ({OUT.stat().st_size // 1024} KiB)")


if __name__ == "__main__":
    main()
