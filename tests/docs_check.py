"""Check built docs pages in a real browser (headless Chromium): not blank, no error, expected text present."""
import re, shutil, subprocess, tempfile
from pathlib import Path

ERROR_MARKERS = ('Traceback (most recent call last)', 'ModuleNotFoundError', 'NameError:', 'ImportError:',
                 '404 - Not found', 'Internal Server Error')

def chromium_path():
    return next((p for p in map(shutil.which, ('chromium', 'chromium-browser', 'google-chrome')) if p), None)

def _chromium(*args, timeout=120, tries=2, dump=False):
    "Chromium's stdout; a start that hangs (seen on a loaded 2-core machine) is retried once with a fresh profile."
    flags = {a.split('=')[0] for a in args}
    defaults = [d for d in ('--window-size=1280,1000', '--virtual-time-budget=4000') if d.split('=')[0] not in flags]
    cmd = [chromium_path(), '--headless', '--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage',
           '--hide-scrollbars', *defaults, *args[:-1], *(['--dump-dom'] if dump else []), args[-1]]
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

# ---- whole-site checks, run inside one Chromium: a checker page served next to the site crawls and renders it

CHECKER_NAME = '__docs_check__.html'
CHECKER_HTML = r"""<!doctype html><html><body><pre id="result">running</pre><script>
const base = location.href.replace(/__docs_check__\.html.*$/, '');
const mode = new URLSearchParams(location.search).get('mode');
const deployed = new URLSearchParams(location.search).get('deployed');  // the site's public URL: links use relative paths
const strip = u => u.split('#')[0];
const inSite = u => u.startsWith(location.origin + '/');
async function crawl() {
  // every same-origin link, image, script and stylesheet reachable from the home page; pages parsed for their ids
  const ids = {}, status = {}, refs = [], queue = [base];
  while (queue.length) {
    const url = queue.shift();
    if (url in status) continue;
    let r; try { r = await fetch(url); status[url] = r.status; } catch (e) { status[url] = String(e); continue; }
    const type = r.headers.get('content-type') || '';
    if (!r.ok || !type.includes('html')) continue;
    const doc = new DOMParser().parseFromString(await r.text(), 'text/html');
    ids[url] = [...doc.querySelectorAll('[id], a[name]')].map(e => e.id || e.getAttribute('name'));
    for (const [sel, attr] of [['a[href]', 'href'], ['img[src]', 'src'], ['script[src]', 'src'], ['link[href]', 'href']]) {
      for (const e of doc.querySelectorAll(sel)) {
        const raw = e.getAttribute(attr);
        if (/^(mailto|javascript|data):/.test(raw)) continue;
        if (deployed && sel === 'a[href]' && raw.startsWith(deployed)) {  // leaves a local copy; 404s once deployed if .html
          refs.push({from: url, href: raw, url: raw, absolute: true}); continue; }
        const abs = new URL(raw, url).href;
        if (!inSite(abs)) continue;
        refs.push({from: url, href: raw, url: abs});
        if (!(strip(abs) in status)) queue.push(strip(abs));
      }
    }
  }
  const broken = [], missing = [];
  for (const r of refs) {
    if (r.absolute) { broken.push(`${r.from} -> ${r.href} (an absolute link to the deployed site)`); continue; }
    const page = strip(r.url), frag = r.url.includes('#') ? decodeURIComponent(r.url.split('#')[1]) : '';
    if (status[page] !== 200) broken.push(`${r.from} -> ${r.href} (${status[page]})`);
    else if (frag && ids[page] && !ids[page].includes(frag)) missing.push(`${r.from} -> ${r.href}`);
  }
  return {pages: Object.keys(ids), broken, missing};
}
function load(frame, url) { return new Promise(ok => { frame.onload = ok; frame.src = url; }); }
async function render(pages) {
  // each page in a 1400 px wide frame, scripts (MathJax) run: what a reader sees
  const out = {};
  for (const p of pages) {
    const frame = document.createElement('iframe');
    frame.style.width = '1400px'; frame.style.height = '1000px';
    document.body.appendChild(frame);
    await load(frame, base + p);
    const w = frame.contentWindow, doc = frame.contentDocument;
    if (w.MathJax && w.MathJax.startup && w.MathJax.startup.promise) { try { await w.MathJax.startup.promise; } catch (e) {} }
    await new Promise(ok => setTimeout(ok, 50));
    const body = doc.body.cloneNode(true);
    body.querySelectorAll('script, style, mjx-container, pre, code').forEach(e => e.remove());
    const over = e => e.scrollWidth > e.clientWidth + 1;
    const content = doc.querySelector('.md-content__inner') || doc.body, right = content.getBoundingClientRect().right;
    out[p] = {
      text: doc.body.innerText,
      math: doc.querySelectorAll('mjx-container').length,
      unrendered: [...doc.querySelectorAll('.arithmatex')].filter(e => !e.querySelector('mjx-container')).map(e => e.textContent.slice(0, 80)),
      raw_tex: body.textContent.includes('\\('),
      code_links: [...doc.querySelectorAll('pre, code')].map(e => e.textContent)
                    .filter(t => /\[[^\]\n]*\]\((https?:|[\w.\/-]+\.html|#)/.test(t)).map(t => t.slice(0, 120)),
      fastprogress_text: [...doc.querySelectorAll('pre, code, p')].some(e => e.textContent.includes('class="fastprogress"')),
      signatures: doc.querySelectorAll('.api-sig').length,
      escaped_cells: [...doc.querySelectorAll('.api-params td')].map(e => e.textContent).filter(t => t.includes('\\|')),
      param_tables: doc.querySelectorAll('.api-params table').length,
      overflowing: [...doc.querySelectorAll('.api-sig pre, .api-sig code, .api-params, .api-params .md-typeset__scrollwrap, .api-params table')]
                    .filter(e => over(e) || e.getBoundingClientRect().right > right + 1)
                    .map(e => (e.closest('.api-params, .api-sig').previousElementSibling || e).textContent.slice(0, 60)),
      images: [...doc.querySelectorAll('.md-content img')].map(i => [i.getAttribute('src'), i.naturalWidth, i.getBoundingClientRect().width]),
      // tables of results (notebook outputs and Markdown tables), API parameter tables aside
      tables: [...doc.querySelectorAll('.md-content table')].filter(t => !t.closest('.api-params')).length,
    };
    frame.remove();
  }
  return out;
}
(async () => {
  let res;
  try { res = mode === 'render' ? await render(JSON.parse(decodeURIComponent(location.hash.slice(1)))) : await crawl(); }
  catch (e) { res = {error: String(e.stack || e)}; }
  document.getElementById('result').textContent = JSON.stringify(res);
})();
</script></body></html>"""

OFFLINE = '--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1'  # the network off: only the local server answers

def _checker(url, timeout):
    import html, json
    dom = _chromium(OFFLINE, '--virtual-time-budget=600000', url, dump=True, timeout=timeout)
    m = re.search(r'<pre id="result">(.*?)</pre>', dom or '', re.S)
    assert m and m[1] != 'running', f'the docs checker did not finish: {(dom or "")[:500]}'
    res = json.loads(html.unescape(m[1]))
    assert 'error' not in res, res['error']
    return res

def crawl_site(base_url, deployed=None, timeout=300):
    "Crawl a served site from its home page in Chromium: `pages` found, `broken` references, `missing` anchors;"
    "a link to `deployed` (the public site's URL) counts as broken: it leaves a local copy."
    import urllib.parse
    q = f'&deployed={urllib.parse.quote(deployed)}' if deployed else ''
    return _checker(f'{base_url.rstrip("/")}/{CHECKER_NAME}?mode=crawl{q}', timeout)

def render_pages(base_url, pages, timeout=600):
    "Render `pages` (paths under `base_url`) at 1400 px, network off: per page its text, MathJax and layout facts."
    import json, urllib.parse
    return _checker(f'{base_url.rstrip("/")}/{CHECKER_NAME}?mode=render#' + urllib.parse.quote(json.dumps(pages)), timeout)

def screenshot(url, path, width=1400, height=2000):
    "A screenshot of `url` as Chromium shows it, network off."
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    _chromium(OFFLINE, f'--window-size={width},{height}', f'--screenshot={path}', url)
