"""The docs site we deploy is the site we test: build it from the notebooks, open pages in headless Chromium.

The site is served twice, at the root and under the deployed base path (`/fundus_ssl/`, nothing at the root),
with the network off for Chromium: links, anchors, formulas and layout must work in both, offline."""
import functools, http.server, json, os, re, subprocess, sys, threading
from pathlib import Path
import pytest
from docs_check import CHECKER_HTML, CHECKER_NAME, chromium_path, check_page, crawl_site, render_pages, screenshot

ROOT = Path(__file__).resolve().parents[1]
SITE = ROOT/'_docs'
SHOTS = Path(os.environ.get('DOCS_SCREENSHOTS', ROOT/'_screenshots'))  # not committed; CI keeps it as an artifact
BASE_PATH = '/fundus_ssl'  # settings.ini's doc_baseurl: where GitHub Pages serves the site

def site_is_stale():
    index = SITE/'index.html'
    if not index.exists(): return True
    newest = max(p.stat().st_mtime for p in [*(ROOT/'nbs').glob('*.ipynb'), *(ROOT/'nbs'/'executed').glob('*.ipynb'),
                                             ROOT/'.ci'/'build_docs.py'])
    return index.stat().st_mtime < newest

class SiteHandler(http.server.SimpleHTTPRequestHandler):
    "Serves the site under `prefix` only (404 elsewhere, as GitHub Pages would), and the checker page next to it."
    prefix = ''
    def log_message(self, *args): pass
    def send_head(self):
        path = self.path.split('?')[0].split('#')[0]
        if path == self.prefix or not path.startswith(self.prefix + '/'):
            if path == self.prefix and self.prefix:  # /fundus_ssl -> /fundus_ssl/, as Pages does
                self.send_response(301); self.send_header('Location', self.prefix + '/'); self.end_headers(); return None
            self.send_error(404); return None
        if path == f'{self.prefix}/{CHECKER_NAME}':
            body = CHECKER_HTML.encode()
            self.send_response(200); self.send_header('Content-Type', 'text/html'); self.send_header('Content-Length', str(len(body)))
            self.end_headers(); return __import__('io').BytesIO(body)
        self.path = self.path[len(self.prefix):]
        return super().send_head()

class QuietServer(http.server.ThreadingHTTPServer):
    def handle_error(self, request, client_address):  # a page closed mid-load (the checker moves on): not a problem
        if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)): super().handle_error(request, client_address)

def serve(prefix, site=SITE):
    handler = functools.partial(type('Handler', (SiteHandler,), {'prefix': prefix}), directory=str(site))
    server = QuietServer(('127.0.0.1', 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f'http://127.0.0.1:{server.server_port}{prefix}'

@pytest.fixture(scope='module')
def built_site():
    if not chromium_path():
        if os.environ.get('CI'): pytest.fail('CI needs Chromium for the docs check (apt-get install chromium)')
        pytest.skip('Chromium is not installed')
    if site_is_stale(): subprocess.run([sys.executable, '.ci/build_docs.py'], cwd=ROOT, check=True)
    return SITE

@pytest.fixture(scope='module', params=['', BASE_PATH], ids=['root', 'base_path'])
def served(built_site, request):
    server, url = serve(request.param)
    yield url
    server.shutdown()

@pytest.fixture(scope='module')
def site_url(built_site):
    server, url = serve('')
    yield url
    server.shutdown()

def site_pages():
    "Paths of the site's pages, as served (`''` for Home, `swcl/`, ...)."
    return sorted('' if p.parent == SITE else f'{p.parent.relative_to(SITE).as_posix()}/'
                  for p in SITE.glob('**/index.html') if 'assets' not in p.parts)

@pytest.fixture(scope='module')
def rendered(site_url):
    "Every page rendered at 1400 px with the network off (one Chromium run for the whole site)."
    return render_pages(site_url, site_pages())

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
    problems = check_page(site_url + '/', expect=['fundus_ssl', 'from fundus_ssl.core import', 'papermill'])
    assert not problems, problems

def test_api_pages_list_their_entries(rendered):
    "Every module's page shows every public name nbdev exported from it, and no error."
    from docs_check import ERROR_MARKERS
    names = exported_names()
    assert 'core' in names
    for mod, objs in names.items():
        text = rendered[f'{mod}/']['text']
        assert len(text) > 200, f'{mod}: page is blank'
        assert not [m for m in ERROR_MARKERS if m in text], f'{mod}: shows an error'
        assert not [o for o in objs if o not in text], f'{mod}: lacks {[o for o in objs if o not in text]}'

def test_links_and_anchors(served):
    "A crawl from Home finds every internal link, image, script and anchor, at the root and under the base path."
    import configparser
    cfg = configparser.ConfigParser(); cfg.read(ROOT/'settings.ini')
    res = crawl_site(served, deployed=cfg['DEFAULT']['doc_host'] + cfg['DEFAULT']['doc_baseurl'])
    assert len(res['pages']) >= len(site_pages()), f'the crawl reached {len(res["pages"])} pages of {len(site_pages())}'
    assert not res['broken'], f'{len(res["broken"])} broken internal references: {res["broken"][:20]}'
    assert not res['missing'], f'{len(res["missing"])} links to missing anchors: {res["missing"][:20]}'

def test_no_markdown_or_html_source_as_text(rendered):
    "No code block shows Markdown link syntax; no fastprogress table is shown as HTML source."
    code_links = {p: r['code_links'] for p, r in rendered.items() if r['code_links']}
    assert not code_links, f'Markdown links inside code blocks: {code_links}'
    assert not [p for p, r in rendered.items() if r['fastprogress_text']], 'fastprogress tables shown as text'

def test_formulas_render_offline(rendered):
    "MathJax (served by the site itself) typesets every formula with the network off: no raw TeX left."
    pages_with_tex = [p for p in ('losses/', 'layers/', 'metrics/', 'augment/', 'moco/') if p in rendered]
    assert len(pages_with_tex) == 5, sorted(rendered)
    for p in pages_with_tex: assert rendered[p]['math'] > 0, f'{p}: no formula rendered'
    unrendered = {p: r['unrendered'][:3] for p, r in rendered.items() if r['unrendered'] or r['raw_tex']}
    assert not unrendered, f'raw TeX left: {unrendered}'

def test_parameters_readable_at_1400px(rendered):
    "Every API entry has its signature and a parameter table, and neither scrolls sideways at 1400 px; so do the"
    "experiment notebooks' parameters."
    for mod, objs in exported_names().items():
        r = rendered[f'{mod}/']
        if objs: assert r['signatures'] >= len(set(objs)) and r['param_tables'] > 0, f'{mod}: {r["signatures"]} signatures'
    for p in ('run_swcl/', 'run_pretrain/'): assert rendered[p]['param_tables'] >= 1, f'{p}: no parameter table'
    escaped = {p: r['escaped_cells'][:3] for p, r in rendered.items() if r['escaped_cells']}
    assert not escaped, f'table cells show Markdown escapes: {escaped}'
    overflowing = {p: r['overflowing'][:5] for p, r in rendered.items() if r['overflowing']}
    assert not overflowing, f'parameter docs scroll sideways at 1400 px: {overflowing}'

def test_classes_show_their_parameters(rendered):
    "Classes render as `class Name(...)` with their real parameters, NamedTuple and exception classes too."
    for page, sig in [('augment/', 'class TwoViews('), ('augment/', 'view1:Tensor'), ('datasets/', 'class DatasetLayoutError('),
                      ('datasets/', 'problem:str'), ('augment/', 'class AugSettings(')]:
        assert sig in rendered[page]['text'], f'{page} lacks {sig!r}'
    import importlib, inspect
    for mod, objs in exported_names().items():
        m = importlib.import_module(f'fundus_ssl.{mod}')
        as_def = [o for o in objs if inspect.isclass(getattr(m, o)) and f'def {o}(' in rendered[f'{mod}/']['text']]
        assert not as_def, f'{mod}: classes shown as def: {as_def}'

def test_run_this_page(rendered):
    "Each module page says how to import it, each experiment page how to run it with papermill."
    for mod in exported_names(): assert f'from fundus_ssl.{mod} import *' in rendered[f'{mod}/']['text'], mod
    for p in ('run_swcl/', 'run_pretrain/'): assert f'papermill nbs/{p[:-1]}.ipynb' in rendered[p]['text'], p

# ---- outputs: figures and tables from executed runs (nbs/executed/, .ci/execute_pages.py)

NBS, EXECUTED = ROOT/'nbs', ROOT/'nbs'/'executed'
EXPERIMENTS = sorted(p.stem for p in NBS.glob('run_*.ipynb'))

def _cells(path):
    return json.loads(Path(path).read_text())['cells']

def _src(c): return ''.join(c['source']) if isinstance(c['source'], list) else c['source']

def plotting_pages():
    "Pages whose notebook calls a plotting function in a cell it shows: pyplot, or the package's `plot_*`/`show_*`."
    import importlib, pkgutil, fundus_ssl
    names = {n for m in pkgutil.iter_modules(fundus_ssl.__path__) if not m.name.startswith('_')
             for n in getattr(importlib.import_module(f'fundus_ssl.{m.name}'), '__all__', []) if re.match(r'(plot|show)_', n)}
    names.discard('show_doc')
    call = re.compile(r'\bplt\.\w+\(|(?<![\w.])(?:' + '|'.join(sorted(names)) + r')\(')
    pages = []
    for nb in sorted(NBS.glob('*.ipynb')):
        for c in _cells(nb):
            src = _src(c)
            if c['cell_type'] != 'code' or re.match(r'#\|\s*(export|hide|eval:\s*false)', src): continue
            calls = [l for l in src.split('\n') if call.search(l) and not l.lstrip().startswith(('def ', '#'))]
            if calls: pages.append('' if nb.stem == 'index' else f'{_page_of(nb)}/'); break
    return pages

def _page_of(nb):
    "The page a notebook becomes: its name without the number (`05a_cache` -> `cache`), as nbdev names it."
    return re.sub(r'^\d+[a-z]?_', '', nb.stem)

def test_pages_that_plot_show_their_figures(rendered):
    "Every page whose notebook calls a plotting function shows a figure, and every image on the site loads."
    pages = plotting_pages()
    assert 'run_swcl/' in pages and '' in pages, pages
    missing = [p or 'Home' for p in pages if not [i for i in rendered[p]['images'] if i[1] > 0]]
    assert not missing, f'pages that call a plotting function but show no figure: {missing} (execute the notebook, or run python .ci/execute_pages.py NAME)'
    broken = {p: [i[0] for i in r['images'] if i[1] == 0] for p, r in rendered.items() if [i for i in r['images'] if i[1] == 0]}
    assert not broken, f'images that do not load: {broken}'

def test_figures_not_shrunk_illegible(rendered):
    "A figure wider than the page's text column is scaled down with its text: none is shown below 65% of its size at"
    "1400 px (a 10 pt label at 100 dpi stays 9 px or more; make such a figure narrower, or split its panels)."
    shrunk = sorted((round(w / n, 2), p, src) for p, r in rendered.items() for src, n, w in r['images'] if n and w / n < 0.65)
    assert not shrunk, f'figures shown below 65% of their size: {shrunk}'

def test_home_and_experiments_show_an_executed_run(rendered):
    "Home and each experiment page show figures and a table of results from an executed run, and say how it ran."
    for p in ['', *(f'{e}/' for e in EXPERIMENTS)]:
        r = rendered[p]
        assert [i for i in r['images'] if i[1] > 0], f'{p or "Home"}: no figure'
        assert r['tables'] >= 1, f'{p or "Home"}: no table of results'
        assert 'from an executed run' in r['text'], f'{p or "Home"}: no note of the executed run'
    for e in EXPERIMENTS: assert "The run's metrics.json" in rendered[f'{e}/']['text'], e

def test_executed_copies_are_in_step():
    "Each experiment has an executed copy whose code is the notebook's (papermill's injected parameters aside): a"
    "notebook edited since its copy was made fails here, naming the command that remakes it."
    missing = [e for e in EXPERIMENTS if not (EXECUTED/f'{e}.ipynb').exists()]
    assert not missing, f'no executed copy of {missing}: run python .ci/execute_pages.py {" ".join(missing)}'
    stale = []
    for copy in sorted(EXECUTED.glob('*.ipynb')):
        assert (NBS/copy.name).exists(), f'{copy}: nbs/{copy.name} does not exist (delete the copy)'
        code = lambda cells: [_src(c).strip() for c in cells if c['cell_type'] == 'code'
                              and 'injected-parameters' not in c.get('metadata', {}).get('tags', [])]
        ours, theirs = code(_cells(copy)), code(_cells(NBS/copy.name))
        if ours != theirs:
            n = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), min(len(ours), len(theirs)))
            stale.append(f'{copy.stem} (code cell {n} differs)')
        tags = [t for c in _cells(copy) for t in c.get('metadata', {}).get('tags', [])]
        assert 'executed-note' in tags and 'executed-metrics' in tags, f'{copy}: lacks the note or the metrics cell of execute_pages.py'
    assert not stale, (f'executed copies out of step with their notebooks: {stale}; run '
                       f'python .ci/execute_pages.py {" ".join(s.split()[0] for s in stale)} and commit nbs/executed/')
    size = sum(p.stat().st_size for p in EXECUTED.glob('*.ipynb'))
    assert size < 6e6, f'nbs/executed/ holds {size / 1e6:.1f} MB: make the runs\' figures smaller'

def test_builder_merges_executed_outputs(capsys):
    "The builder shows a copy's outputs under the notebook's own cells, its note first and its metrics last, and says"
    "when the notebook has code its copy lacks."
    bd = builder()
    code = lambda src, outs=(), tags=(): dict(cell_type='code', source=src, metadata=dict(tags=list(tags)) if tags else {}, outputs=list(outs))
    md = lambda src, tags=(): dict(cell_type='markdown', source=src, metadata=dict(tags=list(tags)) if tags else {})
    out = lambda t: dict(output_type='stream', name='stdout', text=t)
    nb = dict(cells=[dict(cell_type='raw', source='---\ntitle: x\n---', metadata={}), md('# x'), code('a = 1'), code('print(a)'), code('new()')])
    run = dict(cells=[md('# x'), md('Outputs below are from an executed run', [bd.NOTE_TAG]), code('a = 2', [out('p')], ['injected-parameters']),
                      code('a = 1'), code('print(a)', [out('2')]), md('## metrics', [bd.METRICS_TAG])])
    merged = bd.with_outputs(nb, run, 'x')['cells']
    assert [c['cell_type'] for c in merged] == ['raw', 'markdown', 'markdown', 'code', 'code', 'code', 'markdown']
    assert bd.NOTE_TAG in merged[1]['metadata']['tags'] and merged[4]['outputs'] == [out('2')] and merged[5]['outputs'] == []
    assert bd.METRICS_TAG in merged[-1]['metadata']['tags']
    assert 'lacks 1 code cells' in capsys.readouterr().err

def test_changelog(rendered):
    assert 'changelog/' in rendered and re.search(r'\d{4}-\d\d-\d\d', rendered['changelog/']['text'])

@pytest.mark.parametrize('page', ['', 'run_swcl/', 'moco/', 'swcl/', 'datasets/', 'segmentation/'])
def test_screenshots(site_url, page):
    "Screenshots for a reviewer (not committed; CI keeps them as an artifact)."
    path = SHOTS/f'{page.strip("/") or "home"}.png'
    path.unlink(missing_ok=True)
    screenshot(f'{site_url}/{page}', path)
    assert path.exists() and path.stat().st_size > 10_000, f'no screenshot of {page or "Home"}'

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

# ---- the checks catch what they look for (a small broken site), and the builder's pieces (no Chromium, fast)

BROKEN_SITE = {
    'index.html': '<html><body><h1 id="top">fundus_ssl</h1><a href="other/">ok</a> <a href="gone/">gone</a> '
                  '<a href="other/#nope">bad anchor</a> <a href="/other/">root-absolute</a> '
                  '<a href="https://fundus-ssl.github.io/fundus_ssl/other.html#here">deployed</a></body></html>',
    'other/index.html': '<html><body><h2 id="here">x</h2><a href="../#top">back</a>'
                        '<pre><code>x, # see [`f`](https://example.org/f.html#f)</code></pre>'
                        '<pre>&lt;div&gt;&lt;table class="fastprogress"&gt;</pre><p><span class="arithmatex">\\(x^2\\)</span></p>'
                        '<div class="api-params"><table><tr><td><code>' + 'x' * 400 + '</code></td></tr></table></div></body></html>'}

def test_checker_catches_a_broken_site(tmp_path):
    if not chromium_path(): pytest.skip('Chromium is not installed')
    for name, body in BROKEN_SITE.items():
        (tmp_path/name).parent.mkdir(parents=True, exist_ok=True); (tmp_path/name).write_text(body)
    server, url = serve(BASE_PATH, tmp_path)
    try:
        res = crawl_site(url, deployed='https://fundus-ssl.github.io/fundus_ssl')
        assert any('other.html#here' in b for b in res['broken']), res
        assert any('gone/' in b for b in res['broken']) and any(b.endswith('/other/ (404)') for b in res['broken']), res
        assert any('#nope' in m for m in res['missing']) and not any('#top' in m for m in res['missing']), res
        other = render_pages(url, ['other/'])['other/']
        assert other['code_links'] and other['fastprogress_text'] and other['unrendered'] and other['overflowing'], other
    finally: server.shutdown()

def builder():
    import importlib.util
    spec = importlib.util.spec_from_file_location('build_docs', ROOT/'.ci'/'build_docs.py')
    mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
    return mod

def test_builder_links():
    bd = builder()
    site = bd.site_url()
    anchors = {'swcl': {'scheme_attributes'}, 'index': set()}
    md = (f'[`scheme_attributes`]({site}/swcl.html#scheme_attributes), [`_finish`]({site}/datasets.html#_finish), '
          f'[home]({site}/), [ext](https://example.org/a.html), [pic](assets/a.png), [local](swcl.html)')
    missing = []
    out = bd.relink(md, anchors, 'index', missing=missing)
    assert '[`scheme_attributes`](swcl.md#scheme_attributes)' in out and '[home](index.md)' in out
    assert '`_finish`' in out and '_finish)' not in out and missing == [f'index: {site}/datasets.html#_finish']
    assert '[ext](https://example.org/a.html)' in out and '[pic](assets/a.png)' in out and '[local](swcl.md)' in out
    assert f'[local]({site}/swcl/)' in bd.relink('[local](swcl.html)', None, 'index', readme=True)
    code = '```python\ndef f(x, # see [`g`](https://a.b/c.html#g)\n)\n```\nsee [`g`](https://a.b/c.html#g)'
    assert bd.strip_links_in_code(code) == '```python\ndef f(x, # see `g`\n)\n```\nsee [`g`](https://a.b/c.html#g)'
    assert {'scheme_attributes', 'label-schemes', 'x.y'} <= bd.page_anchors('## Label schemes\n### scheme_attributes { #scheme_attributes }\n<a id="x.y"></a>')

def test_builder_outputs_and_entries(tmp_path):
    bd = builder()
    table = '<div><table class="fastprogress"><tr><td>0</td></tr></table></div>'
    out = {'output_type': 'display_data', 'data': {'text/html': table, 'text/markdown': '```html\n' + table + '\n```'}}
    assert bd.render_output(out, 'p', 0, tmp_path, False).startswith('<div class="nb-output"')
    frozen = {'output_type': 'display_data', 'data': {'text/html': '<div><progress max="1" value="0"></progress> 0.00% [0/1 00:00&lt;?]</div>'}}
    assert bd.render_output(frozen, 'p', 0, tmp_path, False) == ''
    bar = '<div><div><progress max="1" value="0"></progress> 0.00% [0/1 00:00&lt;?]</div>' + table + '</div>'
    assert '<progress' not in bd.render_output({'output_type': 'display_data', 'data': {'text/html': bar}}, 'p', 0, tmp_path, False)
    from fundus_ssl.augment import TwoViews
    from fundus_ssl.datasets import DatasetLayoutError, DatasetLabelError
    md = bd.api_entry(TwoViews, 'TwoViews')
    assert 'class TwoViews(' in md and 'view1:Tensor' in md and '| `view1` | `Tensor` |  | [B, C, S, S] float32 (C = 3, or 1 for 1-channel images) |' in md
    assert 'class DatasetLayoutError(dataset:str, path, problem:str=\'not found\', layout:str=\'\')' in bd.api_entry(DatasetLayoutError, 'DatasetLayoutError')
    assert 'class DatasetLabelError(ValueError)' in bd.api_entry(DatasetLabelError, 'DatasetLabelError')
    params = bd.parameters_md("image_size: int = 128  # side of the squares\nencoder = 'resnet10t'  # timm name\nroot = None\n")
    assert '| `image_size` | `int` | `128` | side of the squares |' in params and "| `encoder` | `str` | `'resnet10t'` | timm name |" in params
    assert '| `root` |  | `None` |  |' in params
    assert bd._cell('`str | None` or a | b') == '`str | None` or a \\| b'  # a code span keeps its pipe as is
