"""Check built docs pages in a real browser (headless Chromium): not blank, no error, expected text present."""
import re, shutil, subprocess, tempfile
from pathlib import Path

ERROR_MARKERS = ('Traceback (most recent call last)', 'ModuleNotFoundError', 'NameError:', 'ImportError:',
                 '404 - Not found', 'Internal Server Error')

def chromium_path():
    return next((p for p in map(shutil.which, ('chromium', 'chromium-browser', 'google-chrome')) if p), None)

def _chromium(*args, timeout=120, tries=2):
    "Chromium's stdout; a start that hangs (seen on a loaded 2-core machine) is retried once with a fresh profile."
    cmd = [chromium_path(), '--headless', '--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage',
           '--hide-scrollbars', '--window-size=1280,1000', '--virtual-time-budget=4000', *args]
    for attempt in range(tries):
        with tempfile.TemporaryDirectory() as profile:
            try: return subprocess.run(cmd + [f'--user-data-dir={profile}'], capture_output=True, text=True,
                                       timeout=timeout).stdout
            except subprocess.TimeoutExpired:
                if attempt == tries - 1: raise

def page_text(dom):
    "Visible text of a DOM dump: scripts, styles and tags removed."
    dom = re.sub(r'(?s)<(script|style|noscript)\b.*?</\1>', ' ', dom)
    return re.sub(r'\s+', ' ', re.sub(r'<[^>]+>', ' ', dom)).strip()

def check_page(url, expect=(), screenshot=None, min_chars=200):
    "Problems found on the page at `url` as rendered by Chromium (an empty list when it is fine)."
    if screenshot is not None:
        Path(screenshot).parent.mkdir(parents=True, exist_ok=True)
        _chromium(f'--screenshot={screenshot}', url)
    text = page_text(_chromium('--dump-dom', url))
    problems = [f'{url}: page is blank ({len(text)} visible characters)'] if len(text) < min_chars else []
    problems += [f'{url}: shows an error ({m!r})' for m in ERROR_MARKERS if m in text]
    problems += [f'{url}: lacks {e!r}' for e in expect if e not in text]
    return problems
