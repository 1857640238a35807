"""Original RawNet2 model with the broken forward pass, kept as found.

Source: ``shared/seed/rawnet2_fix_guide.md``, section "Current Implementation
(Problematic)". The guide shows only ``forward``; ``__init__`` and
``_make_res_block`` are reconstructed here from its description:

* "``self.skip`` is ... only conditionally defined in the ``_make_res_block``
  method": each call to ``_make_res_block`` whose block changes the stride or the
  channel count assigns ``self.skip = nn.Sequential(1x1 Conv1d, BatchNorm1d)`` and
  returns the ``nn.Sequential`` main path. The last such call (block 6,
  128 -> 256, stride 2) wins, so one shared ``skip`` module is registered.
* The layers are the same as in both proposed fixes (the guide presents them as
  drop-in replacements of this class), so checkpoints can be compared key by key.

Do not repair this file: the harness exists to expose and pin its defects.
"""

import torch.nn as nn
import torch.nn.functional as F


class RawNet2(nn.Module):
    """RawNet2 model for raw waveform analysis."""

    def __init__(self, num_classes=1):
        super(RawNet2, self).__init__()

        # First convolutional block
        self.conv1 = nn.Sequential(
            nn.Conv1d(1, 32, kernel_size=3, stride=1, padding=1),
            nn.BatchNorm1d(32),
            nn.LeakyReLU(0.3)
        )

        # Residual blocks (blocks 2, 4 and 6 each overwrite the shared self.skip)
        self.res_block1 = self._make_res_block(32, 32)
        self.res_block2 = self._make_res_block(32, 64, stride=2)
        self.res_block3 = self._make_res_block(64, 64)
        self.res_block4 = self._make_res_block(64, 128, stride=2)
        self.res_block5 = self._make_res_block(128, 128)
        self.res_block6 = self._make_res_block(128, 256, stride=2)

        # Global pooling and classification
        self.global_pool = nn.AdaptiveAvgPool1d(1)
        self.fc1 = nn.Linear(256, 64)
        self.fc2 = nn.Linear(64, num_classes)
        self.sigmoid = nn.Sigmoid()

    def _make_res_block(self, in_channels, out_channels, stride=1):
        layers = []
        layers.append(nn.Conv1d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1))
        layers.append(nn.BatchNorm1d(out_channels))
        layers.append(nn.LeakyReLU(0.3))
        layers.append(nn.Conv1d(out_channels, out_channels, kernel_size=3, stride=1, padding=1))
        layers.append(nn.BatchNorm1d(out_channels))

        # Skip connection, stored on the model itself (the defect)
        if stride != 1 or in_channels != out_channels:
            self.skip = nn.Sequential(
                nn.Conv1d(in_channels, out_channels, kernel_size=1, stride=stride),
                nn.BatchNorm1d(out_channels)
            )

        layers.append(nn.LeakyReLU(0.3))

        return nn.Sequential(*layers)

    def forward(self, x):
        # Ensure input is [B, 1, T] where B is batch size and T is time samples
        x = self.conv1(x)

        # Apply residual blocks
        if self.skip is not None:
            x = self.res_block1(x) + self.skip(x)
        else:
            x = self.res_block1(x) + x

        self.skip = None
        x = self.res_block2(x)

        self.skip = None
        x = self.res_block3(x) + x

        self.skip = None
        x = self.res_block4(x)

        self.skip = None
        x = self.res_block5(x) + x

        self.skip = None
        x = self.res_block6(x)

        # Global pooling
        x = self.global_pool(x).squeeze(-1)

        # Classification
        x = F.leaky_relu(self.fc1(x), 0.3)
        x = self.fc2(x)

        return self.sigmoid(x)
