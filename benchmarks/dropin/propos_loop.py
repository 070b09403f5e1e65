"""A BYOL loop as lightly 1.6's BYOL example writes it; propos_loop.py adds ProPos (see ../bench_dropin.py)."""

import argparse
import copy
import json

import torch
from torch import nn
from torch.utils.data import DataLoader
from propos_losses import PSA, PSL, EStep, ProPosLoss, WithIndex

from _user_code import (BYOLPredictionHead, BYOLProjectionHead, cosine_schedule,
                        deactivate_requires_grad, evaluate, make_setup, update_momentum)


class BYOL(nn.Module):
    def __init__(self, backbone, feature_dim, hidden_dim, out_dim):
        super().__init__()
        self.backbone = backbone
        self.projection_head = BYOLProjectionHead(feature_dim, hidden_dim, out_dim)
        self.prediction_head = BYOLPredictionHead(out_dim, hidden_dim, out_dim)
        self.backbone_momentum = copy.deepcopy(self.backbone)
        self.projection_head_momentum = copy.deepcopy(self.projection_head)
        deactivate_requires_grad(self.backbone_momentum)
        deactivate_requires_grad(self.projection_head_momentum)

    def forward(self, x):
        y = self.backbone(x).flatten(start_dim=1)
        z = self.projection_head(y)
        return z

    def forward_momentum(self, x):
        y = self.backbone_momentum(x).flatten(start_dim=1)
        z = self.projection_head_momentum(y)
        z = z.detach()
        return z


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--max-samples", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=None)
    args = parser.parse_args()
    setup = make_setup(args.dataset, args.data_dir, args.max_samples, args.seed)
    setup.epochs = args.epochs or setup.epochs

    model = BYOL(setup.backbone, setup.feature_dim, setup.hidden_dim, setup.out_dim)
    criterion = ProPosLoss(PSA(model.prediction_head), PSL(num_clusters=setup.num_classes))
    estep = EStep(num_clusters=setup.num_classes)
    optimizer = torch.optim.SGD(model.parameters(), lr=setup.lr, momentum=0.9, weight_decay=5e-4)
    dataloader = DataLoader(WithIndex(setup.dataset), batch_size=setup.batch_size, shuffle=True, drop_last=True,
                            collate_fn=setup.collate)

    for epoch in range(setup.epochs):
        total_loss = 0.0
        momentum_val = cosine_schedule(epoch, setup.epochs, 0.996, 1)
        target = nn.Sequential(model.backbone_momentum, nn.Flatten(), model.projection_head_momentum)
        criterion.set_pseudo_labels(estep(target, setup.dataset))
        criterion.set_epoch(epoch)
        for batch in dataloader:
            x0, x1 = batch[0]
            update_momentum(model.backbone, model.backbone_momentum, m=momentum_val)
            update_momentum(model.projection_head, model.projection_head_momentum, m=momentum_val)
            p0 = model(x0)
            z0 = model.forward_momentum(x0)
            p1 = model(x1)
            z1 = model.forward_momentum(x1)
            loss = 0.5 * criterion(p0, p1, z0, z1, batch[-1])
            total_loss += loss.detach()
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        print(f"epoch: {epoch:>02}, loss: {total_loss / len(dataloader):.5f},", criterion.extra_repr(), flush=True)

    result = evaluate(model.backbone_momentum, model.projection_head_momentum, setup.dataset, setup.num_classes, args.seed)
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
