"""Networks only: they know nothing of losses, schedules or training."""

from __future__ import annotations

import math

from torch import nn

from ctmtool.config import NetConfig


def build_net(cfg: NetConfig, data_shape: tuple[int, ...], use_s: bool) -> nn.Module:
    """The raw network F for data items of `data_shape`; `use_s` adds the CTM second noise input."""
    if cfg.kind == "mlp":
        m = cfg.mlp
        return MLP(math.prod(data_shape), m.hidden, m.depth, m.emb, use_s=use_s, label_dim=cfg.label_dim,
                   noise_scale=m.noise_scale)
    if cfg.kind == "unet":
        from ctmtool.nets.songunet import SongUNet

        if len(data_shape) != 3 or data_shape[1] != data_shape[2]:
            raise ValueError(f"the U-Net needs square images (C, H, H), got data of shape {data_shape}")
        u = cfg.unet
        return SongUNet(
            img_resolution=data_shape[1], in_channels=data_shape[0], out_channels=data_shape[0],
            label_dim=cfg.label_dim, augment_dim=u.augment_dim, model_channels=u.model_channels,
            channel_mult=u.channel_mult, channel_mult_emb=u.channel_mult_emb, num_blocks=u.num_blocks,
            attn_resolutions=u.attn_resolutions, dropout=u.dropout, label_dropout=u.label_dropout,
            embedding_type=u.embedding_type, channel_mult_noise=u.channel_mult_noise,
            encoder_type=u.encoder_type, decoder_type=u.decoder_type, resample_filter=u.resample_filter,
            use_s=use_s, s_label=u.s_label,
        )
    if cfg.kind == "adm":
        from ctmtool.nets.adm import ADMUNet

        if len(data_shape) != 3 or data_shape[1] != data_shape[2]:
            raise ValueError(f"the ADM U-Net needs square images (C, H, H), got data of shape {data_shape}")
        a = cfg.adm
        return ADMUNet(
            img_resolution=data_shape[1], in_channels=data_shape[0], out_channels=data_shape[0],
            label_dim=cfg.label_dim, model_channels=a.model_channels, channel_mult=a.channel_mult,
            num_res_blocks=a.num_res_blocks, attn_resolutions=a.attn_resolutions, dropout=a.dropout,
            num_heads=a.num_heads, head_channels=a.head_channels, scale_shift=a.scale_shift,
            resblock_updown=a.resblock_updown, qkv_order=a.qkv_order, time_scale=a.time_scale, use_s=use_s,
        )
    raise ValueError(f"unknown network kind {cfg.kind!r}")


from ctmtool.nets.mlp import MLP  # noqa: E402

__all__ = ["MLP", "build_net"]
