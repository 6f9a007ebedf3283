"""Build the docs site and README.md from the notebooks, without Quarto.

nbdev's own processing (`nbdev_proc_nbs`: show_doc rendering, cell directives kept) writes `_proc/`;
this script turns each processed notebook into a Markdown page and builds them with MkDocs Material
(sidebar, offline search) into `_docs/`. `nbs/index.ipynb` also becomes `README.md`.

    python .ci/build_docs.py            # README.md + _docs/
    python .ci/build_docs.py --readme   # README.md only
"""
import argparse, base64, configparser, json, os, re, shutil, subprocess, sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
PROC, BUILD, SITE = ROOT/'_proc', ROOT/'_docs_build', ROOT/'_docs'
SRC = BUILD/'docs'

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

def render_output(out, page, n, assets, asis):
    if out['output_type'] == 'stream': return fence(text(out['text']), 'text')
    if out['output_type'] == 'error':
        return fence(re.sub(r'\x1b\[[0-9;]*m', '', '\n'.join(out['traceback'])), 'text')
    data = out.get('data', {})
    for mime, ext in (('image/png', 'png'), ('image/jpeg', 'jpg')):
        if mime in data:
            name = f'{page}_{n}.{ext}'
            (assets/name).write_bytes(base64.b64decode(text(data[mime])))
            return f'![](assets/{name})\n'
    if 'image/svg+xml' in data: return text(data['image/svg+xml']) + '\n'
    if 'text/markdown' in data: return text(data['text/markdown']) + '\n'
    if 'text/html' in data: return '<div class="nb-output" markdown="0">\n' + text(data['text/html']) + '\n</div>\n'
    if 'text/plain' in data: return text(data['text/plain']) + '\n' if asis else fence(text(data['text/plain']), 'text')
    return ''

def notebook_page(nb_path, assets, readme=False):
    "Markdown of one processed notebook, and its front matter."
    nb = json.loads(nb_path.read_text())
    cells, meta, parts = nb['cells'], {}, []
    if cells and cells[0]['cell_type'] == 'raw' and text(cells[0]['source']).startswith('---'):
        meta = yaml.safe_load(text(cells[0]['source']).strip().strip('-')) or {}
        cells = cells[1:]
    page = Path(meta.get('output-file', nb_path.stem + '.html')).stem
    parts.append(f"# {meta.get('title', page)}\n")
    if meta.get('description'): parts.append(f"> {meta['description']}\n")
    for i, cell in enumerate(cells):
        src = text(cell['source'])
        if cell['cell_type'] == 'markdown':
            parts.append(src + '\n'); continue
        if cell['cell_type'] != 'code': continue
        opts, code = directives(src)
        if opts.get('include') == 'false' or 'hide' in opts: continue
        if opts.get('echo', 'true') != 'false' and code: parts.append(fence(code, 'python'))
        if opts.get('output', 'true') == 'false': continue
        asis = opts.get('output') == 'asis'
        parts += [render_output(o, page, f'{i}_{j}', assets, asis) for j, o in enumerate(cell.get('outputs', []))]
    md = '\n'.join(parts)
    # links between notebooks are written `page.html`: MkDocs resolves `page.md`, the README needs the site's URL
    site = settings()['doc_host'] + settings()['doc_baseurl']
    md = re.sub(r'\]\((\w[\w-]*)\.html(#[^)]*)?\)', (lambda m: f'](' + (f'{site}/{m[1]}/' if readme else f'{m[1]}.md') + f'{m[2] or ""})'), md)
    return page, meta.get('title', page), md

def proc_nbs():
    subprocess.run([sys.executable, '-c', 'from nbdev.serve import proc_nbs; proc_nbs(force=True, n_workers=0)'],
                   cwd=ROOT, check=True)

def build_readme():
    assets = ROOT/'_readme_assets'; assets.mkdir(exist_ok=True)
    _, _, md = notebook_page(PROC/'index.ipynb', assets, readme=True)
    shutil.rmtree(assets)
    (ROOT/'README.md').write_text(md)

def mkdocs_config(nav):
    s = settings()
    return dict(
        site_name=s['title'], site_description=s['description'], site_url=s['doc_host'] + s['doc_baseurl'] + '/',
        repo_url=s['git_url'], docs_dir=str(SRC), site_dir=str(SITE), use_directory_urls=True, nav=nav,
        theme=dict(name='material', features=['navigation.sections', 'search.highlight', 'content.code.copy'],
                   palette=dict(primary='deep orange')),
        plugins=['search'],
        markdown_extensions=['tables', 'attr_list', 'md_in_html', 'admonition', 'toc',
                             'pymdownx.superfences', 'pymdownx.highlight', {'pymdownx.arithmatex': {'generic': True}}],
        extra_css=['assets/extra.css'],
        # MathJax renders the notebooks' $...$ formulas where the reader is online; offline, the TeX stays readable.
        extra_javascript=['assets/mathjax.js', 'https://cdn.jsdelivr.net/npm/mathjax@3/es5/tex-mml-chtml.js'])

EXTRA_CSS = ".nb-output { overflow-x: auto; } .nb-output table { font-size: 0.7rem; }\n"
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

def build_site():
    shutil.rmtree(SRC, ignore_errors=True); (SRC/'assets').mkdir(parents=True)
    (SRC/'assets'/'extra.css').write_text(EXTRA_CSS)
    (SRC/'assets'/'mathjax.js').write_text(MATHJAX_JS)
    sections = {}
    for nb in sorted(PROC.glob('*.ipynb'), key=lambda p: (p.stem != 'index', p.stem)):
        page, title, md = notebook_page(nb, SRC/'assets')
        (SRC/f'{page}.md').write_text(md)
        sections.setdefault(section_of(nb.stem), []).append({('Home' if page == 'index' else title): f'{page}.md'})
    for doc in sorted(ROOT.glob('*.md')):
        if doc.name not in ('README.md',):
            shutil.copy(doc, SRC/doc.name); sections.setdefault('Project', []).append({doc.stem.title(): doc.name})
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
