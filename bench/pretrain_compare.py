"""MoCo v2, MoCo v2 with feature decorrelation, and BYOL side by side: nbs/run_pretrain.ipynb once per method.

Runs the notebook with papermill for each method with the same parameters (by default the notebook's own
CPU default: `test_resnet` at 64 px on 200 generated EyePACS-like images, so the same data, split, initial
encoder, optimizer, schedule and epochs), then prints a table: training loss (epoch mean) of the first and
last epoch, validation loss, kNN accuracy of the pretrained and of the random initial encoder on the
notebook's probe label, effective rank of the held-out features, and the seconds of training in this
invocation (a resumed, finished run trains nothing: about 0). It writes `compare.png`
(kNN accuracy and effective rank per epoch, and the held-out spectra) and `compare.json` into `--out`;
each method's executed notebook, figures and metrics are in `--out/<method>/`.

    python bench/pretrain_compare.py                                    # ~10 CPU minutes on 2 cores
    python bench/pretrain_compare.py --methods mocov2 mocov2_local_decorr -p epochs=20 -p image_size=96

A method whose folder already holds a finished run is not trained again: runs are resumed (`resume=True`),
so a finished one only reproduces its results from its last checkpoint. Use a new `--out` for new settings.
"""
from __future__ import annotations
import argparse, ast, json, time
from pathlib import Path

NOTEBOOK = Path(__file__).parents[1]/'nbs'/'run_pretrain.ipynb'

def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--methods', nargs='+', default=['mocov2', 'mocov2_decorr', 'byol'], help="the notebook's `method` values")
    p.add_argument('--out', default='runs/pretrain_compare', help='output folder (one subfolder per method)')
    p.add_argument('-p', '--param', action='append', default=[], metavar='NAME=VALUE',
                   help='a notebook parameter for every method (a Python literal, else a string), e.g. -p epochs=20')
    return p.parse_args()

def literal(v:str):
    "A Python literal from the command line, or the string itself."
    try: return ast.literal_eval(v)
    except (ValueError, SyntaxError): return v

def run_method(method:str, out:Path, params:dict) -> dict:
    "Execute the notebook for one method into `out/method`; its metrics."
    import papermill as pm
    folder = out/method
    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    pm.execute_notebook(str(NOTEBOOK), str(folder/'run_pretrain.ipynb'), kernel_name='python3', progress_bar=False,
                        parameters=dict(params, method=method, out_dir=str(folder), resume=True))
    print(f'{method}: notebook ran in {time.time() - t0:.0f} s')
    return json.loads((folder/'metrics.json').read_text())

def table(metrics:dict):
    "One row per method: loss, kNN, effective rank, time."
    import pandas as pd
    return pd.DataFrame({m: dict(loss_first=r['loss_first'], loss_last=r['loss_last'], valid_first=r['valid_loss_first'],
                                 valid_last=r['valid_loss_last'], knn_pretrained=r['knn_pretrained'], knn_random=r['knn_random'],
                                 erank=r['effective_rank'], erank_random=r['effective_rank_random'], epochs=r['epochs_done'],
                                 session_train_s=r['train_seconds']) for m, r in metrics.items()}).T

def plot(metrics:dict, out:Path):
    "kNN accuracy and effective rank per epoch (epoch 0: the random encoder) and the held-out spectra, all methods."
    import numpy as np, matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from fundus_ssl.diagnostics import plot_spectrum
    fig, (a1, a2, a3) = plt.subplots(1, 3, figsize=(13, 3.4))
    for m, r in metrics.items():
        h = r['history']
        a1.plot(range(len(h) + 1), [r['knn_random']] + [e['knn'] for e in h], 'o-', ms=3, label=m)
        a2.plot(range(len(h) + 1), [r['effective_rank_random']] + [e['effective_rank'] for e in h], 'o-', ms=3, label=m)
    first = next(iter(metrics.values()))
    a1.axhline(first['knn_majority'], ls='--', c='k', lw=0.8, label='majority class')
    a1.set(xlabel='epoch', ylabel='kNN accuracy, held out', title=f"kNN probe: {first['knn_label']}"); a1.legend(fontsize=7)
    a2.set(xlabel='epoch', ylabel='effective rank', title='held-out features'); a2.legend(fontsize=7)
    spectra = {}
    for m in metrics:  # the methods first, so each keeps its colour of the other panels
        f = np.load(out/m/'features.npz')
        spectra[m], random = f['pretrained'][~f['is_bank']], f['random'][~f['is_bank']]
    spectra['random init'] = random  # the same initial encoder for every method (same seed)
    import torch
    plot_spectrum({k: torch.as_tensor(v) for k, v in spectra.items()}, ax=a3, title='Held-out feature spectrum, last epoch')
    fig.tight_layout()
    fig.savefig(out/'compare.png', dpi=80)

def main():
    args = parse_args()
    out = Path(args.out).resolve()
    params = dict(kv.split('=', 1) for kv in args.param)
    params = {k: literal(v) for k, v in params.items()}
    metrics = {m: run_method(m, out, params) for m in args.methods}
    t = table(metrics)
    (out/'compare.json').write_text(json.dumps(dict(params=params, results=t.to_dict(orient='index')), indent=2))
    plot(metrics, out)
    import pandas as pd
    with pd.option_context('display.width', 200, 'display.max_columns', 20):
        print(t.round(3).to_string())
    print(f'figures: {out}/compare.png and {out}/<method>/{{loss,probe,spectrum,views,data}}.png')

if __name__ == '__main__': main()
