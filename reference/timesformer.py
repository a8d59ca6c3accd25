"""TimeSformer of the original (``timesformer.py``: divided space-time attention, einops replaced by reshapes)."""
import torch
import torch.nn.functional as F
from torch import nn


class Mlp(nn.Module):
    def __init__(self, in_features, hidden_features):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_features, in_features)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class Attention(nn.Module):
    def __init__(self, dim, num_heads, qkv_bias=True):
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(B, N, C))


class Block(nn.Module):
    """'divided_space_time' block; tokens are ordered b (h w t) m."""

    def __init__(self, dim, num_heads, mlp_ratio=4.0, eps=1e-6):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, num_heads)
        self.temporal_norm1 = nn.LayerNorm(dim, eps=eps)
        self.temporal_attn = Attention(dim, num_heads)
        self.temporal_fc = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x, B, T, H, W):
        m = x.shape[-1]
        # temporal: 'b (h w t) m -> (b h w) t m' and back
        xt = x.reshape(B * H * W, T, m)
        res_temporal = self.temporal_attn(self.temporal_norm1(xt)).reshape(B, H * W * T, m)
        xt = x + self.temporal_fc(res_temporal)
        # spatial: 'b (h w t) m -> (b t) (h w) m' and back
        xs = xt.reshape(B, H * W, T, m).permute(0, 2, 1, 3).reshape(B * T, H * W, m)
        res_spatial = self.attn(self.norm1(xs))
        res_spatial = res_spatial.reshape(B, T, H * W, m).permute(0, 2, 1, 3).reshape(B, H * W * T, m)
        x = xt + res_spatial
        return x + self.mlp(self.norm2(x))


class TimeSformer(nn.Module):
    def __init__(self, depth=12, num_frames=7, H=10, W=16, embed_dim=768, num_heads=12, mlp_ratio=4.0,
                 eps=1e-6):
        super().__init__()
        self.H, self.W = H, W
        self.pos_embed = nn.Parameter(torch.zeros(1, H * W, embed_dim))
        self.time_embed = nn.Parameter(torch.zeros(1, num_frames, embed_dim))
        self.blocks = nn.ModuleList([Block(embed_dim, num_heads, mlp_ratio, eps) for _ in range(depth)])
        self.norm = nn.LayerNorm(embed_dim, eps=eps)  # in the state_dict, unused by forward

    def forward(self, x):
        """x: [B, T, C, H, W] -> [B, T, C, H, W]."""
        B, T, C, H, W = x.shape
        x = x.reshape(B * T, C, H, W).flatten(2).transpose(1, 2)  # [b*t, h*w, c]
        if H != self.H or W != self.W:
            pos = self.pos_embed[0].unsqueeze(0).transpose(1, 2).reshape(1, C, self.H, self.W)
            pos = F.interpolate(pos, size=(H, W), mode="bilinear")
            x = x + pos.flatten(2).transpose(1, 2)
        else:
            x = x + self.pos_embed
        n = H * W
        x = x.reshape(B, T, n, C).permute(0, 2, 1, 3).reshape(B * n, T, C)  # '(b t) n m -> (b n) t m'
        if T != self.time_embed.size(1):
            time_embed = F.interpolate(self.time_embed.transpose(1, 2), size=T, mode="linear").transpose(1, 2)
            x = x + time_embed
        else:
            x = x + self.time_embed
        x = x.reshape(B, n * T, C)  # '(b n) t m -> b (n t) m'
        for blk in self.blocks:
            x = blk(x, B, T, H, W)
        return x.reshape(B, H, W, T, C).permute(0, 3, 4, 1, 2)

