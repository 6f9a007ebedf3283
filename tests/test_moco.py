"MoCo v2 on synthetic fundus images: loss at initialisation and under training, state through save/load, summary, lr_find, refits, cancelled steps, bf16, DDP."
import math, warnings
import pytest
import matplotlib.pyplot as plt
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from fastai.callback.core import Callback, CancelFitException, CancelStepException
from fastai.callback.progress import ProgressCallback
from fastai.callback.training import GradientAccumulation
from fastai.learner import Learner
from fastcore.basics import noop
from fundus_ssl.synthetic import write_eyepacs_like
from fundus_ssl.datasets import read_eyepacs
from fundus_ssl.distributed import concat_all_gather
from fundus_ssl.data import classification_dls
from fundus_ssl.pretrain import unlabeled_dls
from fundus_ssl.moco import MoCoModel, MoCoV2, moco_learner, moco_model

K, BS = 64, 16
CROPS_ONLY = dict(scale=(0.6, 1.), p_jitter=0., p_gray=0., p_blur=0.)  # learnable within a few dozen CPU steps


class FewSteps(Callback):
    "Stop a fit after `n` training batches (bfloat16 is slow on a CPU)."
    order = 100  # after the other callbacks' after_batch (and TrainEvalCallback's count)
    def __init__(self, n=3): self.n = n
    def after_batch(self):
        if self.training and self.train_iter >= self.n: raise CancelFitException()


class RawLosses(Callback):
    "The loss of every training batch."
    def before_fit(self): self.values = []
    def after_batch(self):
        if self.training: self.values.append(self.learn.loss.item())


@pytest.fixture(scope='module')
def df(tmp_path_factory):
    "96 synthetic EyePACS-like images (read back by `read_eyepacs`: with DR grades)."
    return read_eyepacs(write_eyepacs_like(tmp_path_factory.mktemp('data')/'EyePACS', n_patients=48, size=96, seed=0))

@pytest.fixture(scope='module')
def dls(df):
    "The images alone (86 train, 10 valid) at 64 px, batches of 16."
    return unlabeled_dls(df, size=64, bs=BS)


def learner(dls, path, queue_size=K, **kwargs):
    "A quiet MoCo learner on timm's test_resnet."
    kwargs = dict(dict(dim=32, bn_splits=2, p_blur=0.), **kwargs)
    learn = moco_learner(dls, 'test_resnet', queue_size=queue_size, path=path, **kwargs)
    learn.remove_cb(ProgressCallback)
    learn.logger = noop
    return learn


def state(model):
    "Copies of everything MoCo must keep: queue, pointer, key network (weights and BN statistics), query network."
    return {k: v.clone() for k, v in model.state_dict().items()}

def assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a: assert torch.equal(a[k], b[k]), k

def keys_of(sd, prefix): return {k: v for k, v in sd.items() if k.startswith(prefix)}


# ---- the loss ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize('queue_size', [32, 64])
def test_loss_at_initialisation_is_log_k_plus_1(dls, tmp_path, queue_size):
    "With lr 0 the queue fills with the initial network's keys; from then on the loss is log(K+1) (MoCo v2 views)."
    torch.manual_seed(0)
    raw = RawLosses()
    learn = learner(dls, tmp_path, queue_size=queue_size, cbs=raw)
    learn.fit(2, lr=0.)
    full = raw.values[queue_size // BS:]                       # batches scored against a queue of real keys only
    assert abs(sum(full) / len(full) - math.log(queue_size + 1)) < 0.1 * math.log(queue_size + 1), (raw.values, queue_size)
    assert raw.values[0] < math.log(queue_size + 1) - 0.5     # the random initial queue is easy to tell apart


@pytest.mark.parametrize('options', [dict(), dict(local=True, decorrelation='iternorm', symmetric=True)], ids=['plain', 'local+iternorm+symmetric'])
def test_moco_lowers_its_loss(dls, tmp_path, options):
    torch.manual_seed(0)
    raw = RawLosses()
    learn = learner(dls, tmp_path, momentum=0.99, cbs=raw, **CROPS_ONLY, **options)
    learn.fit_one_cycle(10, 3e-3)
    early, late = sum(raw.values[5:15]) / 10, sum(raw.values[-10:]) / 10   # queue full of real keys from step 5 on
    assert late < early - 0.3, raw.values
    assert all(math.isfinite(v) for v in raw.values)


# ---- state ------------------------------------------------------------------------------------------------------
def test_save_load_round_trips_queue_pointer_and_key_network(dls, tmp_path):
    torch.manual_seed(0)
    learn = learner(dls, tmp_path, **CROPS_ONLY)
    learn.fit(1, 1e-3)
    assert learn.model.queue_ptr.item() == 5 * BS % K
    saved = state(learn.model)
    learn.save('moco')
    fresh = learner(dls, tmp_path)
    assert not torch.equal(fresh.model.queue, saved['queue'])
    fresh.load('moco')
    assert_same(state(fresh.model), saved)
    fresh.fit(1, 1e-3)                                         # and training goes on from there
    assert fresh.model.queue_ptr.item() == 10 * BS % K


def test_summary_show_and_validate_leave_state_alone(dls, tmp_path):
    torch.manual_seed(0)
    learn = learner(dls, tmp_path, **CROPS_ONLY)
    learn.fit(1, 1e-3)
    before = state(learn.model)
    learn.summary()
    learn.dls.show_batch(max_n=2)
    learn.moco.show(n=2)
    plt.close('all')
    learn.validate()
    assert_same(state(learn.model), before)


def test_lr_find_restores_queue_pointer_and_key_network(dls, tmp_path):
    "lr_find trains (the queue moves) and then reloads the model it saved, MoCo's state included."
    class Pointer(Callback):
        def before_fit(self): self.ptrs = []
        def after_batch(self): self.ptrs.append(self.learn.model.queue_ptr.item())
    torch.manual_seed(0)
    learn = learner(dls, tmp_path, **CROPS_ONLY)
    learn.fit(1, 1e-3)
    before = state(learn.model)
    ptrs = Pointer()
    learn.add_cb(ptrs)
    learn.lr_find(num_it=6, show_plot=False)
    assert len(set(ptrs.ptrs)) > 1                             # it did enqueue while finding
    assert_same(state(learn.model), before)


def test_second_fit_continues(dls, tmp_path):
    "A second fit starts from the queue, pointer and key network the first left (before_fit resets nothing)."
    class AtStart(Callback):
        def before_train(self):
            if self.epoch == 0: self.seen = (self.learn.model.queue_ptr.item(), keys_of(state(self.learn.model), 'key_'))
    torch.manual_seed(0)
    learn = learner(dls, tmp_path, **CROPS_ONLY)
    learn.fit(1, 1e-3)
    ptr, key = learn.model.queue_ptr.item(), keys_of(state(learn.model), 'key_')
    start = AtStart()
    learn.fit(1, 1e-3, cbs=start)
    assert start.seen[0] == ptr
    assert_same(start.seen[1], key)
    assert learn.model.queue_ptr.item() == (ptr + 5 * BS) % K
    moved = keys_of(state(learn.model), 'key_')
    assert not torch.equal(moved['key_projector.0.weight'], key['key_projector.0.weight'])


def test_cancelled_step_does_not_move_key_network(dls, tmp_path):
    "A step skipped after the backward (fp16 overflow, CancelStepException) moves no weight; the keys still enter the queue."
    class SkipSteps(Callback):
        def before_step(self): raise CancelStepException()
    torch.manual_seed(0)
    learn = learner(dls, tmp_path, momentum=0.9, **CROPS_ONLY)
    learn.fit(1, 1e-3)                                         # query and key networks now differ
    before = state(learn.model)
    learn.fit(1, 1e-3, cbs=SkipSteps())
    after = state(learn.model)
    for k in before:
        if k.startswith('key_') and 'running' not in k and 'num_batches' not in k: assert torch.equal(after[k], before[k]), k
    assert after['queue_ptr'].item() == (before['queue_ptr'].item() + 5 * BS) % K


def test_gradient_accumulation_enqueues_every_batch(dls, tmp_path):
    "Under GradientAccumulation the optimizer steps every other batch: the key network moves then, every batch is enqueued."
    torch.manual_seed(0)
    learn = learner(dls, tmp_path, **CROPS_ONLY)
    calls = []
    update = learn.model.update_target
    learn.model.update_target = lambda m: (calls.append(m), update(m))
    learn.fit(2, 1e-3, cbs=GradientAccumulation(n_acc=2 * BS))
    assert len(calls) == 5                                     # 10 batches, a step every second one
    assert learn.model.queue_ptr.item() == 10 * BS % K


def test_plain_learner_on_labelled_dataloaders(df, tmp_path):
    "Learner(dls, model, cbs=MoCoV2()) on a classification loader: the labels are ignored, the callback's loss replaces fastai's."
    torch.manual_seed(0)
    labelled = classification_dls(df, 'dr_grade', size=64, bs=BS)
    learn = Learner(labelled, moco_model('test_resnet', queue_size=K, dim=32, bn_splits=2), cbs=MoCoV2(**CROPS_ONLY), path=tmp_path)
    learn.remove_cb(ProgressCallback); learn.logger = noop
    queue0 = learn.model.queue.clone()
    learn.fit(1, 1e-3)
    assert learn.loss_func == learn.moco.ssl_loss
    n = len(learn.dls.train)                                   # 77 training images: 4 batches
    assert n == 4 and learn.model.queue_ptr.item() == n * BS % K and not torch.equal(learn.model.queue[:BS], queue0[:BS])


# ---- checks -----------------------------------------------------------------------------------------------------
def test_queue_size_errors_and_warnings(dls, tmp_path):
    with pytest.raises(ValueError, match='queue_size=60 is not a multiple of the 16 keys'):
        learner(dls, tmp_path, queue_size=60).fit(1)
    with pytest.raises(ValueError, match=r'queue_size=48 is not a multiple of the 32 keys .*16 x 2 views'):
        learner(dls, tmp_path, queue_size=48, symmetric=True).fit(1)
    with pytest.warns(UserWarning, match='holds keys of 256 images but training has only 86'):
        learner(dls, tmp_path, queue_size=256).fit(1, lr=0.)
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        learner(dls, tmp_path, queue_size=64).fit(1, lr=0.)


def test_model_and_callback_mismatches(dls, tmp_path):
    with pytest.raises(ValueError, match='needs a dense projector'):
        learner(dls, tmp_path, local_weight=0.5).fit(1)
    with pytest.raises(ValueError, match='bn_splits=16 needs at least 2 images per group: got a batch of 16'):
        learner(dls, tmp_path, bn_splits=16).fit(1)


def test_paper_setting_dimensions():
    m = moco_model('resnet18', queue_size=4096)
    assert [l.out_features for l in m.projector if hasattr(l, 'out_features')] == [512, 128]   # 2048 -> 2048 -> 128 on a ResNet-50
    assert m.queue.shape == (4096, 128) and m.bn_splits == 8
    assert MoCoV2().temperature == 0.2 and MoCoV2().momentum == 0.999


# ---- mixed precision --------------------------------------------------------------------------------------------
def test_bf16_on_cpu_keeps_contrastive_logits_in_fp32(dls, tmp_path, monkeypatch):
    "to_bf16 runs both networks in bfloat16 on the CPU; the InfoNCE logits are float32."
    import torch.nn.functional as F
    seen = {'logits': set(), 'features': set(), 'keys': set()}
    ce = F.cross_entropy
    def recording_ce(logits, *args, **kwargs):
        seen['logits'].add(logits.dtype); return ce(logits, *args, **kwargs)
    monkeypatch.setattr(F, 'cross_entropy', recording_ce)
    class Keys(Callback):
        order = 12
        def before_batch(self): seen['keys'].add(self.learn.yb[0]['k'].dtype)
    torch.manual_seed(0)
    learn = learner(dls, tmp_path, cbs=Keys(), **CROPS_ONLY).to_bf16()
    learn.model.projector.register_forward_hook(lambda m, i, o: seen['features'].add(o.dtype))
    raw = RawLosses(); learn.add_cbs([raw, FewSteps()])
    learn.fit(1, 1e-3)
    assert seen['features'] == {torch.bfloat16} and seen['keys'] == {torch.bfloat16}
    assert seen['logits'] == {torch.float32}
    assert learn.model.queue.dtype == torch.float32 and learn.model.queue_ptr.item() == 3 * BS
    assert len(raw.values) == 3 and all(math.isfinite(v) for v in raw.values)


# ---- DDP --------------------------------------------------------------------------------------------------------
def _ddp_worker(rank, world, init_file, out, n=8):
    dist.init_process_group('gloo', init_method=f'file://{init_file}', rank=rank, world_size=world)
    torch.manual_seed(0)
    model = moco_model('test_resnet', queue_size=4 * n, dim=8, bn_splits=1).train()     # same weights in both processes
    x_all = torch.rand(world * n, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(123)
    keys = model.target_forward(x_all[rank * n:(rank + 1) * n])['z']                     # shuffle-BN across processes
    model.enqueue(keys)
    got = dict(keys=concat_all_gather(keys), queues=concat_all_gather(model.queue[None]), ptr=model.queue_ptr.clone())
    if rank == 0:
        torch.manual_seed(123); perm = torch.randperm(world * n)                            # the permutation rank 0 broadcast
        with torch.no_grad():
            shuffled = torch.cat([model.embed(x_all[perm[r * n:(r + 1) * n]], 'key_')['z'] for r in range(world)])
        torch.save(dict(got, ref=shuffled[perm.argsort()], unshuffled=model.embed(x_all, 'key_')['z'].detach()), out)
    dist.barrier()
    dist.destroy_process_group()

def test_ddp_shuffle_bn_and_enqueue(tmp_path):
    "Two CPU processes: keys come from BN groups of the globally shuffled batch, in the right order; both queues get all keys."
    out = tmp_path/'ddp.pth'
    mp.spawn(_ddp_worker, args=(2, str(tmp_path/'init'), str(out)), nprocs=2, join=True)
    r = torch.load(out, weights_only=True)
    torch.testing.assert_close(r['keys'], r['ref'], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(r['keys'], r['unshuffled'], atol=1e-3)          # the groups' statistics are in use
    assert torch.equal(r['queues'][0], r['queues'][1]) and r['ptr'].item() == 16
    torch.testing.assert_close(r['queues'][0][:16], torch.nn.functional.normalize(r['keys'], dim=1))


def test_queue_keeps_float64_keys():
    "A float64 model's queue stores its keys without rounding them through float32; a float32 queue stays float32."
    m = moco_model('test_resnet', queue_size=8, dim=4, bn_splits=1).double()
    keys = torch.randn(4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 1e3
    m.enqueue(keys)
    assert m.queue.dtype == torch.float64
    torch.testing.assert_close(m.queue[:4], torch.nn.functional.normalize(keys, dim=1), atol=0, rtol=0)
    m32 = moco_model('test_resnet', queue_size=8, dim=4, bn_splits=1)
    m32.enqueue(keys)
    assert m32.queue.dtype == torch.float32
    torch.testing.assert_close(m32.queue[:4], torch.nn.functional.normalize(keys, dim=1).float(), atol=1e-7, rtol=0)
