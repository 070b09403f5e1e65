"""The paper's hyper-parameters, in one place.

Every default used by the losses, the k-means, the reference trainer, its
presets, its command line and the docs is read from here, so that a value is
never written twice. Values follow ProPos (Huang et al., TPAMI) at CIFAR scale
unless the name says otherwise.
"""

from __future__ import annotations

from typing import Final

#: ``tau`` of the prototype scattering loss (Eq. 4).
TEMPERATURE: Final[float] = 0.5
#: ``lambda_psl`` weight of PSL in ``L = L_psa + lambda_psl * L_psl`` (Eq. 12), the default of
#: ``ProPosLoss`` and ``propos-train``: measured in a lightly-style BYOL loop (MNIST 5,000 images,
#: 30 epochs, seeds 0-2, ``benchmarks/bench_dropin.py``), where 3.0 with PSL from epoch 5 beat
#: BYOL on every seed (+0.043 backbone NMI) and 0.1 with the automatic start was level with it.
LAMBDA_PSL: Final[float] = 3.0
#: The paper's ``lambda_psl`` on CIFAR-10/20 (1,000 epochs): the ``cifar10``/``cifar20`` presets.
LAMBDA_PSL_CIFAR: Final[float] = 0.1
#: ``lambda_psl`` on ImageNet-1k.
LAMBDA_PSL_IMAGENET1K: Final[float] = 0.001
#: Automatic PSL start (``ProPosLoss(psl_start="auto")``, ``propos-train --psl-start auto``):
#: PSL switches on once two successive E-steps' pseudo-labels agree with at least this NMI.
PSL_AUTO_AGREEMENT: Final[float] = 0.9
#: ``sigma`` of the positive sampling noise (Eq. 9).
SIGMA: Final[float] = 0.001
#: Largest accepted ``sigma``: ten million times the paper's value. Far larger noise only
#: measures the noise, and from about 1e37 the noise itself overflows float32 (NaN losses).
SIGMA_MAX: Final[float] = 10000.0
#: ``sigma`` on ImageNet-1k.
SIGMA_IMAGENET1K: Final[float] = 0.0001
#: ``m_0`` of the BYOL cosine momentum schedule (Eq. 11).
BASE_MOMENTUM: Final[float] = 0.996
#: Momentum reached at the last step of the cosine schedule.
FINAL_MOMENTUM: Final[float] = 1.0

#: Spherical k-means of the E-step.
KMEANS_N_INIT: Final[int] = 10
KMEANS_MAX_ITER: Final[int] = 300
KMEANS_TOL: Final[float] = 0.0001

#: Optimisation recipe (CIFAR scale): ``lr = BASE_LR * batch / LR_REFERENCE_BATCH``.
BASE_LR: Final[float] = 0.05
LR_REFERENCE_BATCH: Final[int] = 256
PREDICTOR_LR_MULTIPLIER: Final[float] = 10.0
WEIGHT_DECAY: Final[float] = 0.0005
SGD_MOMENTUM: Final[float] = 0.9
EPOCHS: Final[int] = 1000
WARMUP_EPOCHS: Final[int] = 50
BATCH_SIZE: Final[int] = 256
#: E-step every ``r`` epochs.
ESTEP_EVERY: Final[int] = 1

#: Projector / predictor ``Linear(d, HIDDEN_DIM)-BN-ReLU-Linear(HIDDEN_DIM, PROJECTION_DIM)``.
HIDDEN_DIM: Final[int] = 4096
PROJECTION_DIM: Final[int] = 256

#: How ProPos pairs PSL's online and target prototypes: ``"cross"`` scatters each
#: view's online prototypes against the other view's target prototypes (the authors' code).
PSL_PAIRING: Final[str] = "cross"
#: Epoch from which PSL (and the PSA noise) is on in ``ProPosLoss`` (``psl_start``) and
#: ``propos-train`` (``--psl-warmup-epochs``): five epochs of plain BYOL first, so that the first
#: pseudo-labels come from features that already cluster. ``"auto"`` (switch on once two successive
#: E-steps agree with NMI >= ``PSL_AUTO_AGREEMENT``) came later and gained less in the measured loop.
PSL_START: Final[int] = 5
