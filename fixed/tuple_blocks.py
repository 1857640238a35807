"""The fix guide's "Proposed Solution": residual blocks held as ``(main, skip)`` tuples.

Source: ``shared/seed/rawnet2_fix_guide.md``, section "Implementation", copied
verbatim (only the imports are added). Do not repair this file: a tuple is not an
``nn.Module``, so the blocks' 564,480 parameters are invisible to
``parameters()``, ``state_dict()``, ``.to()`` and ``.eval()``; the harness pins
exactly that.
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
        
        # Residual blocks
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
        
        # Define skip connection
        skip = None
        if stride != 1 or in_channels != out_channels:
            skip = nn.Sequential(
                nn.Conv1d(in_channels, out_channels, kernel_size=1, stride=stride),
                nn.BatchNorm1d(out_channels)
            )
        
        layers.append(nn.LeakyReLU(0.3))
        
        return nn.Sequential(*layers), skip
    
    def forward(self, x):
        # Ensure input is [B, 1, T] where B is batch size and T is time samples
        x = self.conv1(x)
        
        # Apply residual blocks with proper skip connections
        main1, skip1 = self.res_block1
        if skip1 is not None:
            x = main1(x) + skip1(x)
        else:
            x = main1(x) + x
            
        main2, skip2 = self.res_block2
        if skip2 is not None:
            x = main2(x) + skip2(x)
        else:
            x = main2(x) + x
            
        main3, skip3 = self.res_block3
        if skip3 is not None:
            x = main3(x) + skip3(x)
        else:
            x = main3(x) + x
            
        main4, skip4 = self.res_block4
        if skip4 is not None:
            x = main4(x) + skip4(x)
        else:
            x = main4(x) + x
            
        main5, skip5 = self.res_block5
        if skip5 is not None:
            x = main5(x) + skip5(x)
        else:
            x = main5(x) + x
            
        main6, skip6 = self.res_block6
        if skip6 is not None:
            x = main6(x) + skip6(x)
        else:
            x = main6(x) + x
        
        # Global pooling
        x = self.global_pool(x).squeeze(-1)
        
        # Classification
        x = F.leaky_relu(self.fc1(x), 0.3)
        x = self.fc2(x)
        
        return self.sigmoid(x)
