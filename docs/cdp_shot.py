"""Screenshot of a page in headless Chromium after running some JavaScript (for make_screenshots.sh).

TensorBoard's Images dashboard shrinks images to its cards; its "Show actual image size" box has no
URL parameter, so this sets the dashboard's ``_actualSize`` through the DevTools protocol first.
The browser and its DevTools client are the tests' (``tests/cdp.py``, stdlib only).

    python docs/cdp_shot.py URL OUT.png WIDTH HEIGHT [JAVASCRIPT]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from cdp import chromium  # noqa: E402

#: sets ``_actualSize`` on every element that has it, through shadow roots
ACTUAL_SIZE = """
(() => {
  let n = 0;
  const walk = (root) => {
    for (const el of root.querySelectorAll('*')) {
      if ('_actualSize' in el) { el._actualSize = true; n++; }
      if (el.shadowRoot) walk(el.shadowRoot);
    }
  };
  walk(document);
  return n;
})()
"""


def main() -> None:
    url, out, width, height = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    script = sys.argv[5] if len(sys.argv) > 5 else ACTUAL_SIZE
    with chromium(width, height) as tools:
        tools.call("Page.navigate", url=url)
        time.sleep(8)  # TensorBoard loads its data
        tools.call("Runtime.evaluate", expression=script)
        time.sleep(4)
        tools.screenshot(out)


if __name__ == "__main__":
    main()
