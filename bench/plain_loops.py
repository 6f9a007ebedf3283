"""The plain PyTorch steps that `bench/run.py` compares the fastai callbacks with: one optimizer step of each method,
computing what its callback computes (`cb` is the callback, for its settings). Imported by `run.py` once torch's threads are set."""
from __future__ import annotations
from fundus_ssl.losses import moco_infonce, byol_loss, supcon_loss
from fundus_ssl.pretrain import cosine_momentum
from fundus_ssl.swcl import positive_masks


def moco_plain(model, cb, aug, opt, ac, x):
    "MoCoV2: keys of view 2, queries of view 1, InfoNCE against the queue; momentum update, then the keys enqueued."
    v = aug(x)
    with ac():
        k = model.target_forward(v.view2)['z']
        q = model(v.view1)['z']
        loss = moco_infonce(q.float(), k.float(), model.queue, cb.temperature)
    loss.backward(); opt.step(); opt.zero_grad()
    model.update_target(cb.momentum); model.enqueue(k)
    return loss.detach()


def byol_plain(model, cb, aug, opt, ac, x):
    "BYOL: targets of the other view, predictions of both views, the symmetric loss; momentum update (mid-schedule)."
    v = aug(x)
    with ac():
        t = model.target_forward(v.view2, v.view1)['z']
        p = model(v.view1, v.view2)['p']
        loss = 2 * byol_loss(p.float(), t.float())
    loss.backward(); opt.step(); opt.zero_grad()
    model.update_target(cosine_momentum(cb.momentum, 0.5))
    return loss.detach()


def swcl_plain(model, cb, aug, opt, ac, x, labels):
    "SWCL: SupCon over both views' embeddings [B, 2, D], positives from the patch labels under the callback's scheme."
    v = aug(x)
    with ac():
        z = model(v.view1, v.view2)['z'].float()
        w = positive_masks(labels, cb.label_scheme, cb.multilabel)   # SWCL's own function: the two paths cannot drift
        loss = supcon_loss(z.view(2, len(x), -1).transpose(0, 1), mask=w, temperature=cb.temperature, base_temperature=cb.base_temperature)
    loss.backward(); opt.step(); opt.zero_grad()
    return loss.detach()


def dino_plain(model, cb, aug, opt, ac, x):
    """DINO: the callback's multi-crop views (built as its `views` builds them, so the first step draws the same crops),
    teacher on the two global crops, student on every crop, `dino_loss` against the centre at epoch 0's teacher
    temperature, the head's last layer frozen (epoch 0); then the teacher's momentum update (mid-schedule) and the centre."""
    import torch
    from fundus_ssl.dino import MultiCropAug, dino_aug_settings
    from fundus_ssl.losses import dino_loss
    size = cb.size or min(x.shape[-2:])
    crops = MultiCropAug(dino_aug_settings(size, cb.local_size or max(1, round(size * 96 / 224)), cb.global_scale, cb.local_scale),
                         cb.n_local, **cb.aug_overrides)(x).crops
    with ac():
        t = model.target_forward(*crops[:2])['z']
        s = model(*crops)['z']
        loss = dino_loss(list(s.float().chunk(len(crops))), list(t.float().chunk(2)), model.center, cb.student_temp, cb.warmup_teacher_temp)
    loss.backward()
    for p in model.projector.last_layer.parameters(): p.grad = None
    opt.step(); opt.zero_grad()
    model.update_target(cosine_momentum(cb.momentum, 0.5))
    with torch.no_grad(): model.update_center(t, cb.center_momentum)
    return loss.detach()
