"""A damaged file of one process in a 2-process run (torchrun, gloo on CPU): every process resumes from the newest
checkpoint intact for all of them, with a warning on rank 0 naming the damaged file.

Also a script: `torchrun --nproc_per_node 2 tests/test_checkpoint_ddp.py OUT_DIR` (what the test runs)."""
import os, socket, sys, warnings
from pathlib import Path
import pytest
import torch
from hang_guard import run

sys.path.insert(0, str(Path(__file__).parent/'scripts'))

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); return s.getsockname()[1]

def _fit(path, r, stop=None, resume=False, epochs=3):
    from fastai.callback.core import Callback, CancelFitException
    from fundus_ssl.checkpoint import SaveState
    from fundus_ssl.distributed import DDPTrainer
    from tiny_runs import queue_net_learner
    class StopAfter(Callback):
        order = SaveState.order + 1
        def after_epoch(self):
            if self.epoch + 1 == stop: raise CancelFitException
    learn = queue_net_learner()
    torch.manual_seed(1000 + r)  # a different random stream on each process
    with learn.no_logging():
        learn.fit_one_cycle(epochs, 1e-2, cbs=[DDPTrainer(), SaveState(path, resume=resume)] + ([StopAfter()] if stop else []))
    return learn

def _main(out:Path):
    from fundus_ssl.distributed import init_distributed, rank, concat_all_gather
    torch.set_num_threads(1)
    assert init_distributed(), 'run me with torchrun --nproc_per_node 2'
    r = rank()
    reference = _fit(out/'reference', r)
    _fit(out/'run', r, stop=2)
    torch.distributed.barrier()
    if r == 0:   # one flipped byte in rank 1's own file of the latest checkpoint
        f = out/'run'/'state_0002.rank1.pth'
        data = bytearray(f.read_bytes()); data[len(data) // 2] ^= 1; f.write_bytes(bytes(data))
    torch.distributed.barrier()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        resumed = _fit(out/'run', r, resume=True)
    same = torch.tensor([all(torch.equal(a, b) for a, b in zip(reference.model.state_dict().values(), resumed.model.state_dict().values()))])
    same_losses = torch.tensor([torch.equal(torch.stack(reference.recorder.losses), torch.stack(resumed.recorder.losses))])
    results = dict(same=concat_all_gather(same), same_losses=concat_all_gather(same_losses),
                   warnings=[str(w.message) for w in caught if type(w.message).__name__ == 'CheckpointWarning'])
    if r == 0: torch.save(results, out/'results.pth')

def test_damaged_rank_file_falls_back_on_every_process(tmp_path):
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--nnodes', '1', '--nproc_per_node', '2',
           '--master_addr', '127.0.0.1', '--master_port', str(_free_port()), __file__, str(tmp_path)]
    env = dict(os.environ, OMP_NUM_THREADS='1', MKL_NUM_THREADS='1', PYTHONWARNINGS='ignore')
    p = run(cmd, 'torchrun tests/test_checkpoint_ddp.py', env=env)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-5000:]
    res = torch.load(tmp_path/'results.pth', weights_only=True)
    assert len(res['warnings']) == 1
    assert 'state_0002.rank1.pth: checksum mismatch' in res['warnings'][0] and 'using ' in res['warnings'][0]
    assert res['warnings'][0].rstrip().endswith('state_0001.pth, the newest intact checkpoint')
    assert res['same'].all()          # both processes end where the uninterrupted run did
    assert res['same_losses'].all()   # with its whole loss history

if __name__ == '__main__': _main(Path(sys.argv[1]))
