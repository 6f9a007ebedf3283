"""Build the docs site and README.md from the notebooks, without Quarto.

nbdev's own processing (`nbdev_proc_nbs`: show_doc rendering, cell directives kept) writes `_proc/`;
this script turns each processed notebook into a Markdown page and builds them with MkDocs Material
(sidebar, offline search) into `_docs/`. `nbs/index.ipynb` also becomes `README.md`.

What this adds to nbdev's rendering, so the site reads well offline and under any base path:
- `show_doc` cells are rendered here from the live objects: `class Name(...)`/`def name(...)` with the real
  parameters, then a table of argument, type, default and comment (no comments, hence no links, in code blocks);
- every API cross-reference becomes a site-relative link (`page.md#anchor`, which MkDocs makes relative), checked
  against the anchors the pages define; links to names without an entry (private helpers) are dropped;
- fastprogress outputs are shown as HTML tables, progress bars dropped; MathJax is served from `.ci/vendor`;
- each page gets a "Run this page" line; a changelog page is written from `git log`;
- a notebook with an executed copy in `nbs/executed/` (written by `.ci/execute_pages.py`: the experiments, run
  with stated parameters) is shown with that copy's outputs under its own (current) code and prose, below the
  copy's note of how and where it ran; `<!-- outputs of NAME: SECTION -->` in a Markdown cell shows the figures
  and tables of that section of NAME's executed run (Home shows the main job's this way).

    python .ci/build_docs.py            # README.md + _docs/
    python .ci/build_docs.py --readme   # README.md only
"""
import argparse, ast, base64, configparser, functools, html, importlib, inspect, io, json, os, re, shutil, subprocess, sys, tokenize
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
PROC, BUILD, SITE = ROOT/'_proc', ROOT/'_docs_build', ROOT/'_docs'
EXECUTED = ROOT/'nbs'/'executed'  # executed copies of notebooks (.ci/execute_pages.py)
SRC = BUILD/'docs'
VENDOR = ROOT/'.ci'/'vendor'

def settings():
    cfg = configparser.ConfigParser(delimiters=['=']); cfg.read(ROOT/'settings.ini')
    return cfg['DEFAULT']

def directives(src):
    "Split `#| key: value` lines off the top of a code cell."
    opts, lines = {}, src.splitlines()
    while lines and lines[0].startswith('#|'):
        k, _, v = lines.pop(0)[2:].partition(':')
        opts[k.strip()] = v.strip() or 'true'
    return opts, '\n'.join(lines).strip()

def text(x): return ''.join(x) if isinstance(x, list) else x

def fence(body, lang=''): return f"```{lang}\n{body.rstrip()}\n```\n"

# ---- outputs

def _progress_free(h:str):
    "fastprogress HTML without its progress bars (a bar frozen mid-run means nothing on a page); None if only bars."
    h = re.sub(r'(?s)<style>.*?</style>', '', h)
    h = re.sub(r'(?s)<div>\s*<progress\b.*?</progress>[^<]*</div>', '', h)
    h = re.sub(r'(?s)<progress\b.*?</progress>[^<]*', '', h)
    return h if '<table' in h else None

def render_output(out, page, n, assets, asis, readme=False):
    "Markdown of one cell output; images are written to `assets` (the README links them on the deployed site)."
    if out['output_type'] == 'stream': return fence(text(out['text']), 'text')
    if out['output_type'] == 'error':
        return fence(re.sub(r'\x1b\[[0-9;]*m', '', '\n'.join(out['traceback'])), 'text')
    data = out.get('data', {})
    for mime, ext in (('image/png', 'png'), ('image/jpeg', 'jpg')):
        if mime in data:
            name = f'{page}_{n}.{ext}'
            (assets/name).write_bytes(base64.b64decode(text(data[mime])))
            return f'![]({site_url() + "/" if readme else ""}assets/{name})\n'
    if 'image/svg+xml' in data: return text(data['image/svg+xml']) + '\n'
    # HTML first: fastprogress also offers its table as a fenced `html` listing under text/markdown
    if 'text/html' in data:
        h = text(data['text/html'])
        if '<progress' in h and (h := _progress_free(h)) is None: return ''
        if readme: h = re.sub(r'(?s)<style.*?</style>', '', h)  # GitHub shows a <style> element's text
        return '<div class="nb-output" markdown="0">\n' + h.strip() + '\n</div>\n'
    if 'text/markdown' in data: return text(data['text/markdown']) + '\n'
    if 'text/plain' in data: return text(data['text/plain']) + '\n' if asis else fence(text(data['text/plain']), 'text')
    return ''

# ---- API entries (show_doc), rendered from the objects

def _anno(a) -> str:
    if a is inspect.Parameter.empty or a is None: return ''
    if isinstance(a, str): return a
    if hasattr(a, '__forward_arg__'): return a.__forward_arg__
    return inspect.formatannotation(a)

def _default(d) -> str:
    if d is inspect.Parameter.empty: return ''
    if inspect.isfunction(d) or inspect.isclass(d): return d.__name__
    return repr(d)

def _field_comments(cls) -> dict:
    "`# comments` after the fields of a NamedTuple or dataclass body."
    try: src = inspect.getsource(cls)
    except (OSError, TypeError): return {}
    res = {}
    for tok in tokenize.generate_tokens(io.StringIO(src).readline):
        if tok.type == tokenize.COMMENT:
            m = re.match(r'\s+(\w+)\s*:[^#]*$', tok.line[:tok.start[1]])
            if m: res.setdefault(m[1], tok.string.lstrip('#').strip())
    return res

def param_docs(obj) -> dict:
    "Each parameter's comment (fastcore docments), 'return' included, for a function or class."
    from fastcore.docments import docments
    res = {}
    targets = [obj]
    if inspect.isclass(obj):
        res.update(_field_comments(obj))
        targets = [obj.__dict__['__init__']] if '__init__' in obj.__dict__ else [obj]
    for t in targets:
        try: res.update({k: v for k, v in docments(t).items() if v})
        except Exception: pass
    return res

def _cell(s:str) -> str:
    "`s` as a Markdown table cell: one line, `|` escaped except inside code spans (which the table reads whole)."
    parts = re.split(r'((`+).*?\2)', s.replace('\n', ' '))
    return ''.join(t if i % 3 == 1 else '' if i % 3 == 2 else t.replace('|', '\\|') for i, t in enumerate(parts))

def _code(s:str) -> str:
    "A Markdown code span of `s` (backticks inside are fenced with more backticks)."
    if not s: return ''
    ticks = '`' * (max((len(m) for m in re.findall('`+', s)), default=0) + 1)
    return f'{ticks}{" " if s.startswith("`") or s.endswith("`") else ""}{s}{" " if s.startswith("`") or s.endswith("`") else ""}{ticks}'

@functools.lru_cache(None)
def lookup():
    from nbdev.doclinks import NbdevLookup
    return NbdevLookup()

def api_entry(obj, name:str, level:int=3) -> str:
    "Markdown for one API entry: heading with nbdev's anchor, source link, signature, docstring, parameter table."
    if isinstance(obj, property): obj = obj.fget
    obj = inspect.unwrap(obj) if inspect.isfunction(obj) else obj
    is_cls = inspect.isclass(obj)
    try: sig = inspect.signature(obj)
    except (TypeError, ValueError): sig = None
    params = list(sig.parameters.values()) if sig else []
    if params and not is_cls and '.' in getattr(obj, '__qualname__', '') and params[0].name in ('self', 'cls'):
        params = params[1:]
    docs = param_docs(obj) if sig else {}
    def p_str(p):
        r = ('*' if p.kind == p.VAR_POSITIONAL else '**' if p.kind == p.VAR_KEYWORD else '') + p.name
        if _anno(p.annotation): r += ':' + _anno(p.annotation)
        if p.default is not p.empty: r += '=' + _default(p.default)
        return r
    ret = _anno(sig.return_annotation) if sig and not is_cls else ''
    head = f"{'class' if is_cls else 'def'} {name.split('.')[-1]}("
    args = [p_str(p) for p in params]
    one = head + ', '.join(args) + ')' + (f' -> {ret}' if ret else '')
    sig_src = one if len(one) <= 90 else head + '\n' + ''.join(f'    {a},\n' for a in args) + ')' + (f' -> {ret}' if ret else '')
    bases = ', '.join(b.__name__ for b in getattr(obj, '__bases__', ()) if b is not object)
    bare = f'class {name}({bases})' if is_cls and bases else f"{'class' if is_cls else 'def'} {name}"  # no signature: how it is declared
    anchor = name.lower()
    heading = f"{'#' * level} {name}" + (f' {{ #{anchor} }}' if '__' not in anchor else '')
    parts = ['---\n']
    fullname = f'{obj.__module__}.{getattr(obj, "__qualname__", name)}'
    if (src := lookup().code(fullname)):
        try: src = re.sub(r'#L\w*$', f'#L{inspect.getsourcelines(obj)[1]}', src)
        except (OSError, TypeError): src = src.split('#')[0]
        parts.append(f'[source]({src}){{ .api-source target="_blank" }}\n')
    if '__' in anchor: parts.append(f'<a id="{anchor}"></a>\n')
    parts += [heading + '\n', '<div class="api-sig" markdown>\n\n' + fence(sig_src if sig else bare, 'python') + '\n</div>\n']
    doc = obj.__doc__ if is_cls else inspect.getdoc(obj)
    if doc and not (is_cls and doc.startswith(f'{obj.__name__}(')):  # NamedTuple's generated docstring
        parts.append(inspect.cleandoc(doc) + '\n')
    rows = [(p, docs.get(p.name, '')) for p in params]
    if rows or docs.get('return'):
        tbl = ['<div class="api-params" markdown>\n', '| Argument | Type | Default | Details |', '|---|---|---|---|']
        for p, d in rows:
            star = '\\*' if p.kind == p.VAR_POSITIONAL else '\\*\\*' if p.kind == p.VAR_KEYWORD else ''
            tbl.append(f'| {star}{_cell(_code(p.name))} | {_cell(_code(_anno(p.annotation)))} | '
                       f'{_cell(_code(_default(p.default)))} | {_cell(d or "")} |')
        if not is_cls and (ret or docs.get('return')):
            tbl.append(f'| **returns** | {_cell(_code(ret))} |  | {_cell(docs.get("return") or "")} |')
        parts.append('\n'.join(tbl) + '\n\n</div>\n')
    return lookup().linkify('\n'.join(parts)) + '\n'

@functools.lru_cache(None)
def module_of(stem:str):
    "The module `nbs/<stem>.ipynb` exports to (`#| default_exp`), or None."
    nb = ROOT/'nbs'/f'{stem}.ipynb'
    if not nb.exists(): return None
    for c in json.loads(nb.read_text())['cells']:
        m = re.search(r'^#\|\s*default_exp\s+(\S+)', text(c['source']), re.M)
        if c['cell_type'] == 'code' and m: return m[1]
    return None

def resolve(expr:str, mod:str|None):
    "The object a `show_doc` argument names, looked up in the notebook's module, then in the package."
    from fundus_ssl import _modidx
    spaces = [f'fundus_ssl.{mod}'] if mod else []
    head = expr.split('.')[0]
    spaces += sorted({k.rsplit('.', 1)[0] for syms in _modidx.d['syms'].values() for k in syms
                      if k.rsplit('.', 1)[-1] == head and k.count('.') == 2})
    for sp in spaces:
        try: m = importlib.import_module(sp)
        except Exception: continue
        try: return functools.reduce(getattr, expr.split('.'), m)
        except AttributeError: continue
    return None

def show_doc_md(code:str, mod:str|None):
    "Our rendering of a cell that is one `show_doc(name, ...)` call, or None to keep nbdev's output."
    try: call = ast.parse(code).body
    except SyntaxError: return None
    if len(call) != 1 or not isinstance(c := call[0].value if isinstance(call[0], ast.Expr) else None, ast.Call): return None
    if not (isinstance(c.func, ast.Name) and c.func.id == 'show_doc' and c.args): return None
    expr = ast.unparse(c.args[0])
    kw = {k.arg: ast.literal_eval(k.value) for k in c.keywords if isinstance(k.value, ast.Constant)}
    obj = resolve(expr, mod)
    if obj is None or not (callable(obj) or isinstance(obj, property)): return None
    try: return api_entry(obj, kw.get('name') or expr, kw.get('title_level', 3))
    except Exception as e:
        print(f'build_docs: show_doc({expr}) kept as nbdev rendered it ({type(e).__name__}: {e})', file=sys.stderr)
        return None

# ---- experiment parameters (papermill's `parameters` cell)

def parameters_md(code:str) -> str:
    "A table of a papermill `parameters` cell: name, type, default, comment; the cell itself folded below."
    comments = {}
    for tok in tokenize.generate_tokens(io.StringIO(code).readline):
        if tok.type == tokenize.COMMENT: comments[tok.start[0]] = tok.string.lstrip('#').strip()
    rows = ['<div class="api-params" markdown>\n', '| Parameter | Type | Default | Details |', '|---|---|---|---|']
    for st in ast.parse(code).body:
        if isinstance(st, ast.AnnAssign) and isinstance(st.target, ast.Name):
            name, typ, val = st.target.id, ast.unparse(st.annotation), st.value
        elif isinstance(st, ast.Assign) and len(st.targets) == 1 and isinstance(st.targets[0], ast.Name):
            name, typ, val = st.targets[0].id, '', st.value
        else: continue
        note = ' '.join(comments[l] for l in range(st.lineno, st.end_lineno + 1) if l in comments)
        if not typ and isinstance(val, ast.Constant) and val.value is not None: typ = type(val.value).__name__
        rows.append(f'| {_cell(_code(name))} | {_cell(_code(typ))} | {_cell(_code(ast.unparse(val) if val else ""))} | {_cell(note)} |')
    folded = '??? note "The parameters cell"\n\n' + ''.join('    ' + l + '\n' for l in fence(code, 'python').splitlines())
    return '\n'.join(rows) + '\n\n</div>\n\n' + folded

# ---- links

def site_url(): return settings()['doc_host'] + settings()['doc_baseurl']

_LINK = re.compile(r'\[((?:[^\[\]]|\[[^\[\]]*\])*)\]\(([^()\s]*)\)')

def strip_links_in_code(md:str) -> str:
    "Links never go inside code blocks: `[`x`](url)` back to `` `x` `` in every fenced block."
    out, fenced = [], False
    for l in md.split('\n'):
        if l.lstrip().startswith('```'): fenced = not fenced
        elif fenced: l = _LINK.sub(lambda m: m[1], l)
        out.append(l)
    return '\n'.join(out)

def relink(md:str, anchors:dict|None, page:str, readme=False, missing=None) -> str:
    "Links into the site (its deployed URL, or `page.html` as notebooks write them) as `page.md#anchor`, which MkDocs"
    "makes relative; with `anchors` (page -> ids), a link to a page or entry that does not exist is dropped (its"
    "text kept) and listed in `missing`. For the README, links are the deployed site's URLs."
    site = site_url()
    def fix(m):
        label, url = m[1], m[2]
        if url.startswith(site + '/') or url == site:
            t = re.fullmatch(r'(?:(\w[\w-]*)(?:\.html|/)?)?(?:#(\S*))?', url[len(site):].lstrip('/'))
        else: t = re.fullmatch(r'(\w[\w-]*)\.html(?:#(\S*))?', url)
        if t is None: return m[0]  # external, in-page or asset link
        target, frag = t[1] or 'index', t[2] or ''
        if anchors is not None and (target not in anchors or (frag and frag not in anchors[target])):
            if missing is not None: missing.append(f'{page}: {url}')
            return label
        if readme: return f'[{label}]({site}/{"" if target == "index" else target + "/"}{"#" + frag if frag else ""})'
        return f'[{label}]({target}.md{"#" + frag if frag else ""})'
    return _LINK.sub(fix, md)

def page_anchors(md:str) -> set:
    "Ids a page's Markdown defines: explicit `{ #id }`/`<a id>` and the slugs of its headings."
    from markdown.extensions.toc import slugify
    ids, fenced = set(), False
    for l in md.split('\n'):
        if l.lstrip().startswith('```'): fenced = not fenced; continue
        if fenced: continue
        if (h := re.match(r'#{1,6}\s+(.*?)\s*(?:\{[^}]*#([^\s}]+)[^}]*\})?\s*$', l)):
            ids.add(h[2] if h[2] else slugify(re.sub(r'[`*]|\[([^\]]*)\]\([^)]*\)', r'\1', h[1]), '-'))
        ids.update(re.findall(r'<a id="([^"]+)"', l))
    return ids

# ---- pages

def run_line(stem:str, page:str) -> str:
    "How to run what a page documents: its module's import, or papermill for an experiment notebook."
    mod = module_of(stem)
    if mod: cmd, lang, what = f'from fundus_ssl.{mod} import *', 'python', 'Use this module'
    elif stem == 'index': cmd, lang, what = 'from fundus_ssl.core import *', 'python', 'Use the package'
    else:
        cmd, lang, what = f'papermill nbs/{stem}.ipynb {page}_out.ipynb   # -p NAME VALUE overrides a parameter', 'sh', 'Run this page'
    return f'!!! tip "{what}"\n\n' + ''.join('    ' + l + '\n' for l in fence(cmd, lang).splitlines()) + '\n'

# ---- executed copies (.ci/execute_pages.py writes them; tests/test_docs_site.py keeps them in step)

NOTE_TAG, METRICS_TAG = 'executed-note', 'executed-metrics'  # cells execute_pages.py adds: how it ran; its metrics.json
INJECTED_TAG = 'injected-parameters'  # papermill's cell of the run's parameters

def _tags(cell) -> list: return cell.get('metadata', {}).get('tags', [])

def executed_copy(stem:str) -> dict|None:
    "The executed copy of `nbs/<stem>.ipynb` in `nbs/executed/`, or None."
    p = EXECUTED/f'{stem}.ipynb'
    return json.loads(p.read_text()) if p.exists() else None

def executed_code(run:dict) -> list:
    "The code cells of an executed copy that come from its notebook (papermill's injected parameters left out)."
    return [c for c in run['cells'] if c['cell_type'] == 'code' and INJECTED_TAG not in _tags(c)]

def with_outputs(nb:dict, run:dict, stem:str) -> dict:
    "Processed notebook `nb` with the outputs of its executed copy `run`: each code cell takes the outputs of the copy's"
    "next cell with the same code; the copy's note comes first. A cell the copy lacks (the notebook changed since it"
    "was run) keeps its own outputs and is reported."
    code, k, stale = executed_code(run), 0, 0
    head = 1 if nb['cells'] and nb['cells'][0]['cell_type'] == 'raw' else 0  # the front matter
    added = lambda tag: [c for c in run['cells'] if c['cell_type'] == 'markdown' and tag in _tags(c)]
    cells = nb['cells'][:head] + added(NOTE_TAG)
    for c in nb['cells'][head:]:
        if c['cell_type'] == 'code':
            j = next((j for j in range(k, len(code)) if text(code[j]['source']).strip() == text(c['source']).strip()), None)
            if j is None: stale += 1
            else: c, k = {**c, 'outputs': code[j].get('outputs', [])}, j + 1
        cells.append(c)
    cells += added(METRICS_TAG)
    if stale: print(f'build_docs: nbs/executed/{stem}.ipynb lacks {stale} code cells of nbs/{stem}.ipynb (shown without outputs):'
                    f' run python .ci/execute_pages.py {stem}', file=sys.stderr)
    return {**nb, 'cells': cells}

def processed(stem:str) -> dict:
    "The processed notebook of `stem`, with its executed copy's outputs where there is one."
    nb = json.loads((PROC/f'{stem}.ipynb').read_text())
    return with_outputs(nb, run, stem) if (run := executed_copy(stem)) is not None else nb

_OUTPUTS_OF = re.compile(r'<!--\s*outputs of (\w+):\s*([^;]*?)\s*(?:;\s*(\w+)\s*)?-->')

def metrics_block(run_md:str, key:str) -> str:
    "The table of entry `key` in the metrics cell of an executed copy (execute_pages.py writes one per entry)."
    m = re.search(r'\*\*`' + re.escape(key) + r'`\*\*\n\n(.*?)(?=\n\n\*\*`|\Z)', run_md, re.S)
    if m is None: raise ValueError(f'the metrics.json of the executed run has no entry {key!r}')
    return m[1].strip() + '\n'

def section_outputs(stem:str, heading:str, page:str, assets, readme=False, key=None) -> str:
    "The figures and tables that the code under `## heading` of `stem`'s executed run shows, after the run's note;"
    "with `key`, then the table of that entry of the run's metrics.json."
    nb = processed(stem)
    if executed_copy(stem) is None: raise FileNotFoundError(f'nbs/executed/{stem}.ipynb: run python .ci/execute_pages.py {stem}')
    parts, state, level, table = [], 'before', 0, ''
    for i, c in enumerate(nb['cells']):
        src = text(c['source'])
        if c['cell_type'] == 'markdown' and NOTE_TAG in _tags(c):
            body = f'{src.strip()} The whole run: the [{stem}]({stem}.html) page.'
            parts.insert(0, f'> **From an executed run of {stem}**: ' + ' '.join(body.split()) + '\n' if readme else  # GitHub: no admonitions
                            f'!!! note "From an executed run of {stem}"\n\n' + _indent(body) + '\n')
            continue
        if c['cell_type'] == 'markdown' and METRICS_TAG in _tags(c):
            if key: table = f'Its `metrics.json`, entry `{key}` (95% intervals as value [low, high]):\n\n' + metrics_block(src, key)
            continue
        if c['cell_type'] == 'markdown' and (h := re.match(r'(#+)\s+(.*?)\s*$', src.split('\n')[0])):
            if state == 'inside' and len(h[1]) <= level: state = 'after'
            if state == 'before' and h[2] == heading: state, level = 'inside', len(h[1])
            continue
        if state == 'inside' and c['cell_type'] == 'code':
            for j, o in enumerate(c.get('outputs', [])):
                if o.get('output_type') in ('display_data', 'execute_result') and set(o.get('data', {})) & {'image/png', 'image/jpeg', 'text/html'}:
                    parts.append(render_output(o, page, f'{stem}_{i}_{j}', assets, False, readme))
    if state == 'before': raise ValueError(f'nbs/{stem}.ipynb has no section {heading!r} (asked for by {page})')
    if key and not table: raise ValueError(f'nbs/executed/{stem}.ipynb has no metrics cell: run python .ci/execute_pages.py {stem}')
    return '\n'.join(parts + [table])

def _indent(md:str) -> str: return ''.join('    ' + l + '\n' if l.strip() else '\n' for l in md.strip().split('\n'))

def notebook_page(nb_path, assets, readme=False):
    "Markdown of one processed notebook (links not yet resolved), and its front matter."
    nb = processed(nb_path.stem) if nb_path.parent == PROC else json.loads(nb_path.read_text())
    cells, meta, parts = nb['cells'], {}, []
    if cells and cells[0]['cell_type'] == 'raw' and text(cells[0]['source']).startswith('---'):
        meta = yaml.safe_load(text(cells[0]['source']).strip().strip('-')) or {}
        cells = cells[1:]
    page = Path(meta.get('output-file', nb_path.stem + '.html')).stem
    mod = module_of(nb_path.stem)
    parts.append(f"# {meta.get('title', page)}\n")
    if meta.get('description'): parts.append(f"> {meta['description']}\n")
    if not readme: parts.append(run_line(nb_path.stem, page))
    for i, cell in enumerate(cells):
        src = text(cell['source'])
        if cell['cell_type'] == 'markdown' and NOTE_TAG in _tags(cell):
            parts.append('!!! note "An executed run"\n\n' + _indent(src)); continue
        if cell['cell_type'] == 'markdown':
            src = _OUTPUTS_OF.sub(lambda m: section_outputs(m[1], m[2], page, assets, readme, m[3]), src)
            parts.append(src + '\n'); continue
        if cell['cell_type'] != 'code': continue
        opts, code = directives(src)
        if opts.get('include') == 'false' or 'hide' in opts: continue
        if not readme and 'show_doc' in code and (md := show_doc_md(code, mod)) is not None:
            parts.append(md); continue
        if not readme and 'parameters' in _tags(cell):
            parts.append(parameters_md(code))
        elif opts.get('echo', 'true') != 'false' and code: parts.append(fence(code, 'python'))
        if opts.get('output', 'true') == 'false': continue
        asis = opts.get('output') == 'asis'
        parts += [render_output(o, page, f'{i}_{j}', assets, asis, readme) for j, o in enumerate(cell.get('outputs', []))]
    md = strip_links_in_code('\n'.join(parts))
    return page, meta.get('title', page), md

def proc_nbs():
    subprocess.run([sys.executable, '-c', 'from nbdev.serve import proc_nbs; proc_nbs(force=True, n_workers=0)'],
                   cwd=ROOT, check=True)

def build_readme():
    assets = ROOT/'_readme_assets'; assets.mkdir(exist_ok=True)
    _, _, md = notebook_page(PROC/'index.ipynb', assets, readme=True)
    shutil.rmtree(assets)
    (ROOT/'README.md').write_text(relink(md, None, 'index', readme=True))

def mkdocs_config(nav):
    s = settings()
    return dict(
        site_name=s['title'], site_description=s['description'], site_url=s['doc_host'] + s['doc_baseurl'] + '/',
        repo_url=s['git_url'], docs_dir=str(SRC), site_dir=str(SITE), use_directory_urls=True, nav=nav,
        # font=False: the system fonts, not Google Fonts' (the site asks nothing of the network)
        theme=dict(name='material', features=['navigation.sections', 'search.highlight', 'content.code.copy'],
                   palette=dict(primary='deep orange'), font=False),
        plugins=['search'],
        markdown_extensions=['tables', 'attr_list', 'md_in_html', 'admonition', 'toc', 'pymdownx.details',
                             'pymdownx.superfences', 'pymdownx.highlight', {'pymdownx.arithmatex': {'generic': True}}],
        extra_css=['assets/extra.css'],
        # MathJax from the site itself (npm's mathjax, vendored in .ci/vendor): formulas render offline too.
        extra_javascript=['assets/mathjax-config.js', 'assets/mathjax/tex-chtml.js'],
        validation=dict(links=dict(anchors='warn')))

EXTRA_CSS = """
.nb-output { overflow-x: auto; } .nb-output table { font-size: 0.7rem; }
/* API entries: the signature wraps instead of scrolling; the parameter table fits the page */
.api-sig pre > code { white-space: pre-wrap; overflow-wrap: anywhere; }
.api-source { float: right; font-size: smaller; }
.md-grid { max-width: 1600px; }  /* a wider text column: parameter tables read without scrolling at 1400 px */
.api-params .md-typeset__scrollwrap { margin: 0 0 1em; overflow-x: visible; }
.api-params .md-typeset__table { display: block; padding: 0; }
.md-typeset .api-params table:not([class]) { display: table; width: 100%; font-size: 0.7rem; }
.api-params td code { white-space: normal; overflow-wrap: break-word; word-break: normal; }
.api-params td:first-child code { white-space: nowrap; }
.api-params td:nth-child(2) code, .api-params td:nth-child(3) code { overflow-wrap: anywhere; }  /* long defaults */
.md-typeset .api-params td:nth-child(2), .md-typeset .api-params td:nth-child(3) { min-width: 7em; }
.md-typeset .api-params table:not([class]) td { padding: 0.4em 0.8em; overflow-wrap: break-word; }
"""
MATHJAX_JS = ("window.MathJax = {tex: {inlineMath: [['\\\\(', '\\\\)']], displayMath: [['\\\\[', '\\\\]']],"
              " processEscapes: true, processEnvironments: true}, options: {ignoreHtmlClass: '.*', processHtmlClass: 'arithmatex'}};\n")

# Sidebar sections by notebook number: the layers of the package, then the experiments.
SECTIONS = [(0, 1, ''), (1, 6, 'Data'), (6, 10, 'Models and losses'), (10, 20, 'Methods'),
            (20, 30, 'Evaluation'), (30, 40, 'Analyses'), (40, 50, 'Command line'), (90, 100, 'Results and reliability')]

def section_of(stem:str) -> str:
    if stem == 'index': return ''
    if stem.startswith('run_'): return 'Experiments'
    num = int(re.match(r'(\d+)', stem).group(1)) if re.match(r'\d+', stem) else None
    return next((name for lo, hi, name in SECTIONS if num is not None and lo <= num < hi), 'Other')

def changelog_md() -> str:
    "The changelog page: the repository's commits by day, newest first (from `git log` at build time)."
    try:
        log = subprocess.run(['git', 'log', '--date=short', '--pretty=format:%ad%x09%h%x09%H%x09%s'], cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout
        shallow = subprocess.run(['git', 'rev-parse', '--is-shallow-repository'], cwd=ROOT, capture_output=True,
                                 text=True).stdout.strip() == 'true'
    except (OSError, subprocess.CalledProcessError): log, shallow = '', False
    md = ['# Changelog\n', '> What changed in fundus_ssl, commit by commit (newest first), from the repository\'s history.\n']
    if shallow: md.append('!!! note\n    This site was built from a shallow clone: older commits are not listed.\n')
    if not log: md.append('The history was not available when this site was built.\n')
    esc = lambda t: re.sub(r'([\\`*_{}\[\]<>#|$])', r'\\\1', t)
    day = None
    for line in log.splitlines():
        date, short, full, subject = line.split('\t', 3)
        if date != day: md.append(f'\n## {date}\n'); day = date
        md.append(f'- [`{short}`]({settings()["git_url"]}/commit/{full}) {esc(subject)}')
    return '\n'.join(md) + '\n'

def build_site():
    shutil.rmtree(SRC, ignore_errors=True); (SRC/'assets').mkdir(parents=True)
    (SRC/'assets'/'extra.css').write_text(EXTRA_CSS)
    (SRC/'assets'/'mathjax-config.js').write_text(MATHJAX_JS)
    shutil.copytree(VENDOR/'mathjax', SRC/'assets'/'mathjax', ignore=shutil.ignore_patterns('LICENSE'))
    sections, pages = {}, {}
    for nb in sorted(PROC.glob('*.ipynb'), key=lambda p: (p.stem != 'index', p.stem)):
        page, title, md = notebook_page(nb, SRC/'assets')
        pages[page] = md
        sections.setdefault(section_of(nb.stem), []).append({('Home' if page == 'index' else title): f'{page}.md'})
    for doc in sorted(ROOT.glob('*.md')):
        if doc.name not in ('README.md',):
            pages[doc.stem] = doc.read_text(); sections.setdefault('Project', []).append({doc.stem.title(): f'{doc.stem}.md'})
    pages['changelog'] = changelog_md(); sections.setdefault('Project', []).append({'Changelog': 'changelog.md'})
    anchors = {page: page_anchors(md) for page, md in pages.items()}
    missing = []
    for page, md in pages.items(): (SRC/f'{page}.md').write_text(relink(md, anchors, page, missing=missing))
    if missing: print(f'build_docs: {len(missing)} links to entries no page documents, shown as text:\n  '
                      + '\n  '.join(sorted(set(missing))), file=sys.stderr)
    nav = [*sections.pop('', []), *({k: v} for k, v in sections.items())]
    cfg = BUILD/'mkdocs.yml'
    cfg.write_text(yaml.safe_dump(mkdocs_config(nav), sort_keys=False))
    subprocess.run([sys.executable, '-m', 'mkdocs', 'build', '--strict', '-q', '-f', str(cfg)], cwd=ROOT, check=True,
                   env={**os.environ, 'NO_MKDOCS_2_WARNING': '1'})

if __name__ == '__main__':
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--readme', action='store_true', help='only write README.md')
    args = ap.parse_args()
    proc_nbs(); build_readme()
    if not args.readme: build_site()
    print(f'README.md written; site in {SITE}' if not args.readme else 'README.md written')
