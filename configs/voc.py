r"""PASCAL VOC 2012 + ScribbleSup, DeepLabV3+ on MobileNetV2: the paper's recipe.

Paper appendix C: DeepLabV3+ (output stride 16) on an ImageNet-pretrained
MobileNetV2, batch 12, crop 513, SGD (momentum 0.9, weight decay 5e-4, poly
0.9, ASPP/decoder lr x10), two stages of 60 epochs each over the 10,582
``train_aug`` images (52,910 steps at batch 12): stage 1 partial CE on the
scribbles at lr 0.007, stage 2 soft self-labeling at lr 0.0007 initialised
from stage 1, with H_CCE + P_CD on the 4-neighbourhood, eta 0.3, lambda 6,
sigma_rgb 9, 200 solver steps of size 0.075. Evaluation: full image, single
scale, 21-class mIoU on the 1,449 ``val`` images.

Units of the lr: lr 0.007 / 0.0007 on the lineage's loss (rloss /
pytorch-deeplab-xception, where the rates come from): pixel mean / batch size
(``loss.normalization="batch_mean"``; at batch 12 a step is 1/12 of a
pixel-mean step at the same lr).

GD (``method=gd``, Table 4's GD row: 67.0 on nn4, 69.5 on dense). The loss is
eq. 4, ``pCE + (η Σ_U H(σ) + λ Σ w P(σ)) / |U|``
(:func:`potts_jax.losses.regularized_loss`). The paper gives no η, λ or
relaxation for GD ("hyperparameters are tuned separately" for each loss,
appendix C, values not stated). On nn4 / nn8 we use the self-labeling values
(η 0.3, λ 6, the variant's relaxation, P_CD by default) and the two-stage
recipe: with this loss the η : λ balance is that of the solver's E(y). The
dense 69.5 is marked as reproduced with [36]'s code (rloss): its script
(``train_withdensecrfloss.sh``) trains DeepLabV3+ MobileNet with the DenseCRF
loss, weight 2e-9 on ``-Σ_{i≠j} w_ij σ_iᵀσ_j`` (P_BL up to a constant, no
entropy term) per image at half resolution (``--rloss-scale 0.5``), sigma_rgb
15, sigma_xy 100, in one stage from ImageNet at lr 0.007 for 60 epochs. So
``method=gd,neighborhood=dense`` sets η 0, P_BL (unless ``relaxation=q``),
sigma_rgb 15, sigma_xy 100, ``energy.scale_factor`` 0.5, and λ converted from
2e-9 (:func:`set_gd`; approximate, since rloss's term is a sum and ours is
divided by ``|U|``); run it with ``stage=single`` to train as rloss does.

Prerequisites: the ``voc_scribble`` dataset prepared in
``--config.input.data_dir`` (``python -m potts_jax.data.prepare
--dataset=voc_scribble ...``; the run stops with that command if it is
missing) and the ImageNet backbone converted into ``weights/mobilenet_v2``
(``--config.model.pretrained_dir``)::

  python -m potts_jax.models.pretrained convert --arch mobilenet_v2 \
      --src mobilenet_v2-b0353104.pth --dst weights/mobilenet_v2

Run (both stages, in ``DIR/stage1`` and ``DIR/stage2``)::

  python -m potts_jax.main --config=configs/voc.py --workdir=DIR

Variants (``--config=configs/voc.py:VARIANT,...``):

* ``method=pce|gd|soft_sl|hard_sl|hard_sl_gc``: the stage-2 method (paper
  Table 4; ``hard_sl_gc`` labels by graph cut on the host, nn4/nn8 only);
* ``relaxation=bl|q|nq|cce|cd|lq``, ``cross_entropy=ce|rce|cce|q``,
  ``neighborhood=nn4|nn8|dense``: the loss (Tables 3, 4, Figure 4;
  ``dense`` sets Table 4's DN loss, H_CCE + P_Q, σ_xy 100, λ 6e-3:
  :func:`set_dense`, or rloss's for ``method=gd``: :func:`set_gd`);
* ``length=1.0|0.8|0.5|0.3|0``: the scribble length ratio (Table 3's columns;
  dataset configs ``xml`` and ``xml_len<ratio>``);
* ``stage=both|1|2|single``: both stages (default), stage 1 alone (pCE, lr
  0.007), stage 2 alone (lr 0.0007) from ``--config.init_from=STAGE1_DIR``,
  or ``single``: the stage-2 method alone from ImageNet at the stage-1 lr
  0.007 for 60 epochs, the network never trained with pCE on the scribbles
  (Table 5's "no pretrain" rows);
* ``batch=N``: batch size, with ``total_steps`` recomputed for 60 epochs;
* ``pretrained=false``: no ImageNet weights;
* ``runlocal``: tiny network and images, a few steps (checks a set-up).

With ``stages``, ``--config.optim.lr`` sets stage 1's lr; stage 2's lr lives
in the stage list (change it with a ``stage=2`` run and ``--config.optim.lr``).

Expected (paper, val mIoU, MobileNetV2, full-length scribbles): 71.22 for the
default H_CCE + P_CD (Table 3; 71.12 nq, 71.05 q, 71.21 lq, 67.41 cce, 67.24
bl); Table 4 on nn4: gd 67.0, soft_sl 71.1 (P_Q); on dense: gd 69.5, soft_sl
67.9. ``hard_sl`` (argmax of the soft pseudo-labels, H_CCE + P_Q, nn4): 69.8
(section 3.2); no paper number on dense. Table 4's hard-SL cells, 69.6 (nn4)
and 63.1 (dense), are other methods (GridCRF's trust region, ScribbleSup),
not this ``hard_sl``. Shorter scribbles
(``length``): Table 3, e.g. P_CD 70.93 / 67.84 / 65.52 / 59.04 at 0.8 / 0.5 /
0.3 / 0.
"""

import ml_collections

from configs import common

TRAIN_IMAGES = 10_582  # train_aug (VOC 2012 train + SBD), paper appendix C.
LENGTHS = (0.0, 0.3, 0.5, 0.8, 1.0)  # Table 3's scribble length ratios.
# λ of the dense self-labeling loss (set_dense derives it): 1/1000 of the
# 4-NN λ 6, as a pixel's dense affinity is ~1000 times its 4-NN one.
DENSE_LAM = 6e-3
# rloss's train_withdensecrfloss.sh: --densecrfloss 2e-9 --rloss-scale 0.5
# --sigma-rgb 15 --sigma-xy 100 (Table 4's dense GD, reproduced with it).
RLOSS_DENSECRF_WEIGHT = 2e-9
RLOSS_SCALE = 0.5
# Valid unlabeled share of a 513² crop: VOC's ~500x375 images at scales
# 0.5-2 of the crop leave about 10% padding; scribbles cover about 3%.
UNLABELED_SHARE = 0.87


def set_gd(c: ml_collections.ConfigDict, arg: ml_collections.ConfigDict
           ) -> None:
  """Table 4's dense GD, rloss's DenseCRF-loss setting, when ``arg`` asks
  for ``method=gd,neighborhood=dense`` (module docstring); else nothing.

  λ: rloss adds ``2e-9 · Σ_b S_b / B`` with ``S_b`` the half-resolution sum of
  ``w_ij (1 - σ_iᵀσ_j)`` over ordered pairs; our batch_mean loss adds
  ``λ Σ_b D_b / (|U| B)`` with ``D_b`` :func:`potts_jax.dense.bilateral.dense_energy`,
  which counts each unordered pair once and scales a half-resolution sum by
  ``(1 / 0.5)⁴ = 16``: ``D_b ≈ 16 S_b / 2``. Equal terms need
  ``λ = 2e-9 · 2 / 16 · |U|``, with ``|U|`` taken as ``UNLABELED_SHARE`` of
  the global batch's crops (6.9e-4 at batch 12, crop 513).
  """
  if arg.method != "gd" or arg.neighborhood != "dense":
    return
  e = c.energy
  if arg.relaxation != "q":
    e.relaxation = "bl"
  e.eta = 0.0
  e.sigma_rgb = 15.0
  e.sigma_xy = 100.0
  e.scale_factor = RLOSS_SCALE
  unlabeled = UNLABELED_SHARE * c.input.batch_size * c.input.crop_size**2
  e.lam = RLOSS_DENSECRF_WEIGHT * 2 * RLOSS_SCALE**4 * unlabeled


def set_dense(c: ml_collections.ConfigDict, arg: ml_collections.ConfigDict
              ) -> None:
  """Table 4's DN self-labeling loss when ``arg`` asks for
  ``neighborhood=dense`` with a method other than ``gd``; else nothing.

  H_CCE + P_Q (section 3.3; P_BL if ``relaxation=bl``, as the dense filter
  takes only quadratic relaxations), σ_xy 100, σ_rgb 9 (the paper's for all
  VOC experiments), filtered at half resolution as rloss does, and
  λ = :data:`DENSE_LAM`.

  λ. Pairs count once on every neighbourhood
  (:mod:`potts_jax.neighborhoods`), so λ weighs the same pair sum; what
  differs is how much weight a pixel has in it. Measured at full resolution
  on 10 GrabCut photos (321x481 to 480x640, close to VOC's ~500x375), a
  pixel's dense affinity ``Σ_j w_ij`` (σ_xy 100, σ_rgb 9) has median 2600
  (1100-10400), its 4-NN one 2.5: about 1000 times more. Keeping the
  per-pixel balance of the Potts term against the unary η of the 4-NN recipe
  gives ``λ = 6 · 2.5 / 2600 ≈ 6e-3``. rloss's DenseCRF weight 2e-9 does
  not carry over: it is weighed against a mean over the scribbled pixels
  (its CE: mean over the batch's ~12 · 7100 scribbled pixels, / B; its
  DenseCRF: 2e-9 · the ordered-pair sum at half size, / B), which in the
  units of the solver's sum (pCE and η per pixel, unordered pairs at full
  size: ``2e-9 · 85000 · 2 / 16``) is λ ≈ 2e-5, 300 times weaker per pixel
  than the 4-NN term; on the held-out GrabCut check
  (benchmarks/dense_setting.py) that λ leaves the unary's argmax unchanged.
  """
  if arg.method == "gd" or arg.neighborhood != "dense":
    return
  e = c.energy
  e.relaxation = "bl" if arg.relaxation == "bl" else "q"
  e.sigma_rgb = 9.0
  e.sigma_xy = 100.0
  e.scale_factor = 0.5
  e.lam = DENSE_LAM


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  arg = common.parse_arg(
      arg, method="soft_sl", relaxation="cd", cross_entropy="cce",
      neighborhood="nn4", stage="both", length=1.0, batch=12,
      pretrained=True, runlocal=False)
  common.check_choice("stage", arg.stage, common.STAGES)
  common.check_choice("length", arg.length, LENGTHS)
  c = common.get_config()
  c.lock()  # A key that common.get_config() lacks is an error.

  c.input.dataset = "voc_scribble"
  c.input.dataset_config = ("xml" if arg.length == 1.0
                            else f"xml_len{arg.length:g}")
  c.input.num_classes = 21
  c.input.train_split = "train_aug"
  c.input.batch_size = arg.batch
  c.input.crop_size = 513
  c.input.scale_range = (0.5, 2.0)
  c.input.flip = True
  c.input.blur_prob = 0.5  # rloss's RandomGaussianBlur.
  c.eval.split = "val"
  c.eval.batch_size = 4
  # Every val image whole, at its own size, unpadded: the standard VOC val
  # protocol (full-image evaluation at batch 1 of robust_trust_region), exact
  # (one compilation per distinct image shape). center_crop is rloss's 513
  # FixScaleCrop; padded (to 512 x 512, VOC images being at most 500 x 500)
  # lets the padding enter the network.
  c.eval.protocol = "full"
  c.eval.crop_size = 513
  c.eval.pad_to = (512, 512)  # eval.protocol=padded only
  c.eval.every = 0

  c.model.backbone = "mobilenet_v2"
  c.model.width = 1.0
  c.model.output_stride = 16
  c.model.pretrained_dir = "weights/mobilenet_v2" if arg.pretrained else ""

  c.total_steps = common.steps_for(common.EPOCHS, TRAIN_IMAGES, arg.batch)
  c.optim.momentum = 0.9
  c.optim.weight_decay = 5e-4
  c.optim.poly_power = 0.9
  c.optim.head_lr_mult = 10.0
  c.loss.normalization = "batch_mean"  # The lineage's, whose lr these are.

  common.set_loss(c, arg)
  c.energy.eta = 0.3
  c.energy.lam = 6.0
  c.energy.sigma_rgb = 9.0
  c.solver.num_steps = 200
  c.solver.step_size = 0.075
  set_gd(c, arg)
  set_dense(c, arg)

  c.log_every = 50
  c.checkpoint_every = 1000
  c.name = (f"voc_{arg.method}_{arg.cross_entropy}_{arg.relaxation}_"
            f"{arg.neighborhood}_len{arg.length:g}")
  if arg.runlocal:
    common.set_runlocal(c)

  common.set_stages(c, arg.stage, arg.method, common.STAGE1_LR,
                    common.STAGE2_LR)
  if arg.stage == "1":
    c.name = f"voc_pce_len{arg.length:g}"
  return c
