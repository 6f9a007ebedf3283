"fundus_ssl.distributed in two real processes (torchrun, gloo on CPU) against one process on the global batch."
import importlib.util, os, socket, sys
from pathlib import Path
import pytest
from hang_guard import run
import torch

SCRIPTS = Path(__file__).parent/'scripts'
spec = importlib.util.spec_from_file_location('ddp_checks', SCRIPTS/'ddp_checks.py')
ddp_checks = importlib.util.module_from_spec(spec); spec.loader.exec_module(ddp_checks)

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); return s.getsockname()[1]

@pytest.fixture(scope='module')
def results(tmp_path_factory):
    "Run tests/scripts/ddp_checks.py once in 2 processes; what rank 0 saved."
    out = tmp_path_factory.mktemp('ddp')
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--nnodes', '1', '--nproc_per_node', '2',
           '--master_addr', '127.0.0.1', '--master_port', str(_free_port()), str(SCRIPTS/'ddp_checks.py'), str(out)]
    env = dict(os.environ, OMP_NUM_THREADS='1', MKL_NUM_THREADS='1', PYTHONWARNINGS='ignore')
    p = run(cmd, 'torchrun tests/scripts/ddp_checks.py', env=env)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-5000:]
    return torch.load(out/'results.pth', weights_only=True)

def test_collectives(results):
    c = results['collectives']
    assert results['world_size'] == 2
    x0, x1 = torch.arange(6.).view(3, 2), torch.arange(4.).view(2, 2) + 100
    assert torch.equal(c['gathered'], torch.cat([x0, x1]))                         # uneven sizes, rank order
    shuffled = c['shuffled']
    assert torch.equal(shuffled.sort(0).values, torch.cat([x0, x1]).sort(0).values)  # a permutation of the global batch
    assert c['unshuffled_ok'].all()                                                   # each process gets its rows back
    w = torch.arange(10.).view(5, 2)
    assert torch.equal(c['grad'], w * 1 + w * 2)   # gradient of every process's loss, summed into each row

def _single_process(loss:str):
    "Loss and gradients of one process on the global batch."
    model = ddp_checks.encoder()
    x1, x2, y = ddp_checks.views()
    return ddp_checks.loss_and_grads(model, ddp_checks.losses(model, x1, x2, y, gather=lambda z: z, labels=lambda t: t)[loss])

@pytest.mark.parametrize('loss', ['nt_xent', 'supcon'])
def test_gathered_negatives_match_single_process(results, loss):
    ref, got = _single_process(loss), results['losses']['gathered'][loss]
    torch.testing.assert_close(got['loss'], ref['loss'], rtol=1e-10, atol=1e-12)
    for g, r in zip(got['grads'], ref['grads']): torch.testing.assert_close(g, r, rtol=1e-9, atol=1e-12)

def test_local_negatives_do_not_match(results):
    "Without gathering, each process contrasts only its own half batch: loss and gradients differ (the test above can fail)."
    ref, got = _single_process('nt_xent'), results['losses']['local_nt_xent']
    assert (got['loss'] - ref['loss']).abs() > 1e-3
    assert max((g - r).abs().max() for g, r in zip(got['grads'], ref['grads'])) > 1e-3

def test_ddp_trainer_fit_matches_single_process(results):
    "Two processes with batch size 4 under DDPTrainer train exactly as one process with batch size 8."
    ref = ddp_checks.fit_learner(bs=8)
    assert results['fit']['n_iter'] == ref.train_iter == 2 * 32 // 8
    for k, v in ref.model.state_dict().items(): torch.testing.assert_close(results['fit']['state'][k], v, rtol=1e-5, atol=1e-6)
    moved = ref.model.weight - ddp_checks.fit_learner(bs=8, epochs=0).model.weight
    assert moved.abs().max() > 1e-2   # it did train

def test_moco_matches_single_process(results):
    """MoCo v2 in 2 processes (4 images each, one BatchNorm group per process) trains as one process with 8 images in
    2 BatchNorm groups: same smoothed losses, queue, pointer and weights. Deterministic settings: the views are the
    image and its mirror image (TwoViewAug's random draws depend on the per-process batch size) and no shuffle-BN
    (its permutation is drawn from each run's random stream, which those draws shift). BatchNorm running statistics
    are left out: DDP broadcasts rank 0's, one process averages over its 2 groups."""
    ref = ddp_checks.moco_result(ddp_checks.moco_fit(bs=8, bn_splits=2, fixed_views=True, shuffle_bn=False))
    got = results['moco']['exact']
    assert len(got['losses']) == len(ref['losses']) == 2 * 32 // 8
    torch.testing.assert_close(got['losses'], ref['losses'], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got['queue'], ref['queue'], rtol=1e-5, atol=1e-5)
    assert got['ptr'] == ref['ptr']
    assert got['params'].keys() == ref['params'].keys()
    for k, v in ref['params'].items(): torch.testing.assert_close(got['params'][k], v, rtol=1e-4, atol=1e-5, msg=k)
    assert not torch.allclose(ref['queue'], ddp_checks.moco_fit(bs=8, bn_splits=2, epochs=0, fixed_views=True).model.queue)

def test_moco_shuffle_bn_keeps_processes_in_step(results):
    "With random views and shuffle-BN, every process holds the same queue, pointer and weights after training."
    m = results['moco']
    assert torch.equal(m['queues'][0], m['queues'][1]) and torch.equal(m['ptrs'][0], m['ptrs'][1])
    assert torch.equal(m['first_params'][0], m['first_params'][1])

def test_resume_under_ddp(results):
    """SaveState in 2 processes: rank 1 writes its own generator states next to rank 0's checkpoint, and a run
    interrupted after epoch 2 and resumed ends with the same weights as an uninterrupted one on both processes."""
    res = results['resume']
    assert res['files'] == ['state_0001.pth', 'state_0001.rank1.pth', 'state_0002.pth', 'state_0002.rank1.pth']
    assert res['same'].all()
    torch.testing.assert_close(res['resumed'], res['reference'], rtol=0, atol=0)
