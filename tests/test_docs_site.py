"""The docs site we deploy is the site we test: build it from the notebooks, open pages in headless Chromium."""
import functools, http.server, json, os, subprocess, sys, threading
from pathlib import Path
import pytest
from docs_check import chromium_path, check_page

ROOT = Path(__file__).resolve().parents[1]
SITE = ROOT/'_docs'
SHOTS = ROOT/'_screenshots'

def site_is_stale():
    index = SITE/'index.html'
    if not index.exists(): return True
    newest = max(p.stat().st_mtime for p in [*(ROOT/'nbs').glob('*.ipynb'), ROOT/'.ci'/'build_docs.py'])
    return index.stat().st_mtime < newest

class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args): pass

@pytest.fixture(scope='module')
def site_url():
    if not chromium_path():
        if os.environ.get('CI'): pytest.fail('CI needs Chromium for the docs check (apt-get install chromium)')
        pytest.skip('Chromium is not installed')
    if site_is_stale(): subprocess.run([sys.executable, '.ci/build_docs.py'], cwd=ROOT, check=True)
    handler = functools.partial(QuietHandler, directory=str(SITE))
    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f'http://127.0.0.1:{server.server_port}'
    server.shutdown()

def exported_names():
    "API entries per module page: the functions and classes in each module's `__all__` (nbdev documents each"
    "with show_doc); core lists only what it defines, not its re-exports."
    import importlib, inspect, pkgutil, fundus_ssl
    def entries(mod):
        m = importlib.import_module(f'fundus_ssl.{mod}')
        return [n for n in m.__all__ if inspect.isfunction(getattr(m, n)) or inspect.isclass(getattr(m, n))]
    mods = [m.name for m in pkgutil.iter_modules(fundus_ssl.__path__) if not m.name.startswith('_')]
    names = {m: entries(m) for m in mods}
    reexported = {n for m, ns in names.items() if m != 'core' for n in ns}
    names['core'] = [n for n in names['core'] if n not in reexported]
    return names

def test_home_page(site_url):
    problems = check_page(site_url + '/', expect=['fundus_ssl', 'from fundus_ssl.core import', 'papermill'],
                          screenshot=SHOTS/'home.png')
    assert not problems, problems

def test_api_pages_list_their_entries(site_url):
    "Every module's page shows every public name nbdev exported from it."
    names = exported_names()
    assert 'core' in names
    for mod, objs in names.items():
        shot = SHOTS/f'{mod}.png' if mod in ('core', 'datasets') else None  # two screenshots are enough to look at
        problems = check_page(f'{site_url}/{mod}/', expect=objs, screenshot=shot)
        assert not problems, problems

def test_search_index_has_api(site_url):
    index = json.loads((SITE/'search'/'search_index.json').read_text())
    text = ' '.join(doc['text'] + doc['title'] for doc in index['docs'])
    for objs in exported_names().values():
        for o in objs: assert o in text, f'{o} missing from the search index'

BROKEN = {'blank.html': '<html><body></body></html>',
          'error.html': '<html><body><h1>fundus_ssl</h1><pre>Traceback (most recent call last):\n  File "x.py"\n'
                        'NameError: name \'foo\' is not defined</pre>' + '<p>filler text</p>' * 40 + '</body></html>',
          'missing.html': '<html><body><h1>Some other package</h1>' + '<p>filler text</p>' * 40 + '</body></html>'}

@pytest.mark.parametrize('page', BROKEN)
def test_check_catches_broken_pages(tmp_path, page):
    if not chromium_path(): pytest.skip('Chromium is not installed')
    (tmp_path/page).write_text(BROKEN[page])
    problems = check_page((tmp_path/page).as_uri(), expect=['fundus_ssl', 'fundus_data_root'])
    assert problems, f'the check passed a broken page: {page}'
