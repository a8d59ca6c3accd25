"""HD-VILA of the original (``e2e_model.py`` + ``modeling_stage.py``), eval mode, with named taps.

``HDVILA(config, stage, transformer_cls)`` as the original: ``HDVILAForPreTraining`` (pretraining, retrieval) or
the video QA models ``HDVILAForSequenceClassification`` (open-ended) / ``HDVILAForMultipleChoice``.
"""
import types

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn import CrossEntropyLoss

from reference.bert import (BertEmbeddings, BertEncoder, BertPooler, BertPreTrainingHeads,
                                        extended_attention_mask)
from reference.resnet import ResNet
from reference.taps import recording, tap  # noqa: F401  (recording re-exported)
from reference.timesformer import TimeSformer

# The reference's BertConfig (transformers 3.x defaults) plus HD-VILA's additions, as its fixtures record it.
BASE_CONFIG = dict(
    output_attentions=False, output_hidden_states=False, is_decoder=False, pruned_heads={}, torchscript=False,
    use_return_dict=False, vocab_size=30522, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
    intermediate_size=4096, hidden_act="gelu", hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1,
    max_position_embeddings=512, type_vocab_size=2, initializer_range=0.02, layer_norm_eps=1e-12, pad_token_id=0,
    resnet_depth=50, resnet_frozen_stage=-1, backbone_channels=[256, 512, 1024, 2048],
    backbone_channel_in_size=2048, bert_mean=1, use_itc=1, score_agg_func="lse",
    max_grid_row_position_embeddings=100, max_grid_col_position_embeddings=100,
    max_temporal_position_embeddings=100, model_type="bert", timesformer_depth=4, timesformer_heads=16,
    pixel_random_sampling_size=0, stage=2, timesformer_type="new")


def make_config(**overrides):
    """The reference config dict; ``backbone_channels`` follow ``resnet_depth`` unless given."""
    cfg = dict(BASE_CONFIG, **overrides)
    if "backbone_channels" not in overrides:
        expansion = 1 if cfg["resnet_depth"] in (18, 34) else 4
        cfg["backbone_channels"] = [64 * expansion * 2 ** i for i in range(4)]
    if "backbone_channel_in_size" not in overrides:
        cfg["backbone_channel_in_size"] = cfg["backbone_channels"][-1]
    return cfg


# run_video_qa.py (setup_model) builds its config from the base model JSON plus these attributes, without the
# pretraining / retrieval ones.
QA_ATTRIBUTES = dict(classifier="mlp", cls_hidden_scale=2, loss_type="ce")
NOT_IN_QA_CONFIG = ("bert_mean", "use_itc", "score_agg_func", "pixel_random_sampling_size")


def make_qa_config(num_labels, **overrides):
    """The config of a video QA model (``num_labels``: answers, or choices for multiple choice)."""
    cfg = make_config(**overrides)
    for key in NOT_IN_QA_CONFIG:
        del cfg[key]
    return dict(cfg, num_labels=num_labels, **QA_ATTRIBUTES)


class VisualInputEmbedding(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)  # unused
        self.row_position_embeddings = nn.Embedding(config.max_grid_row_position_embeddings, config.hidden_size)
        self.col_position_embeddings = nn.Embedding(config.max_grid_col_position_embeddings, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(1, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, grid):
        """grid: (B, n_frm, H, W, C) -> (B, H*W, C)."""
        bsz, _, _, _, hsz = grid.shape
        grid = self.add_2d_positional_embeddings(grid.mean(1))
        visual_tokens = grid.view(bsz, -1, hsz)
        token_type_ids = torch.zeros(visual_tokens.shape[:-1], dtype=torch.long, device=grid.device)
        return self.LayerNorm(visual_tokens + self.token_type_embeddings(token_type_ids))

    def add_2d_positional_embeddings(self, grid):
        height, width, hsz = grid.shape[-3:]
        lead = (1,) * (len(grid.shape) - 3)
        row = self.row_position_embeddings(torch.arange(height, dtype=torch.long, device=grid.device))
        grid = grid + row.view(*lead, height, 1, hsz)
        col = self.col_position_embeddings(torch.arange(width, dtype=torch.long, device=grid.device))
        return grid + col.view(*lead, 1, width, hsz)


class HDVILABaseModel(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.embeddings = BertEmbeddings(config)
        self.encoder = BertEncoder(config)
        self.pooler1 = BertPooler(config)
        if config.stage == 2:
            self.visual_embeddings = VisualInputEmbedding(config)
            self.pooler2 = BertPooler(config)

    def _mask(self, attention_mask):
        return extended_attention_mask(attention_mask, next(self.parameters()).dtype)

    def forward_stage1(self, text_input_ids, attention_mask):
        embeddings = tap("text_embeddings", self.embeddings(input_ids=text_input_ids))
        sequence = self.encoder.forward_stage(embeddings, self._mask(attention_mask), stage=1)
        return sequence, self.pooler1(sequence)

    def forward_stage2(self, clip_num, text_input_ids, visual_inputs, attention_mask):
        """text_input_ids: stage-1 text states (clips*B, Lt, D); visual_inputs (clips*B, #frm, H, W, D)."""
        visual_inputs = tap("visual_tokens", self.visual_embeddings(visual_inputs))
        visual_attention_mask = attention_mask.new_ones(visual_inputs.shape[:2])
        attention_mask = torch.cat([attention_mask, visual_attention_mask], dim=-1)
        embedding_output = torch.cat([text_input_ids, visual_inputs], dim=1)
        embedding_output = self.encoder.forward_stage(embedding_output, self._mask(attention_mask), stage=2)
        pooled_output = tap("pooled2", self.pooler2(embedding_output))
        embedding_output = embedding_output.view(clip_num, -1, *embedding_output.shape[-2:])
        return embedding_output, pooled_output.view(clip_num, -1, pooled_output.shape[-1])


class HDVILAForPreTraining(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.bert = HDVILABaseModel(config)
        if config.stage == 2:
            self.cls = BertPreTrainingHeads(config)
            self.pool_method = config.score_agg_func
        self.t_proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.v_proj = nn.Linear(config.hidden_size, config.hidden_size)

    def encode_text(self, text_input_ids, text_input_mask):
        """Stage-1 text states (B, Lt, D) and L2-normalised text features (B, D)."""
        text_input_ids, pooled_output1 = self.bert.forward_stage1(text_input_ids, text_input_mask)
        tap("text_seq_stage1", text_input_ids)
        if self.config.bert_mean:
            pooled_output1 = (text_input_ids * text_input_mask.unsqueeze(-1)).sum(1) / torch.sum(
                text_input_mask, dim=1, keepdim=True)
            pooled_output1 = self.bert.pooler1.activation(self.bert.pooler1.dense(pooled_output1))
        tap("text_pooled", pooled_output1)
        return text_input_ids, F.normalize(self.t_proj(pooled_output1), dim=-1, p=2)

    def forward(self, visual_inputs, text_input_ids, text_input_mask, mlm_labels=None, itm_labels=None):
        """visual_inputs: (clips, B, #frm=1, H, W, D); text_input_ids, text_input_mask: (B, Lt)."""
        clip_num, b, frm_num, h, w, c = visual_inputs.shape
        text_input_ids, text_features = self.encode_text(text_input_ids, text_input_mask)
        visual_outputs = tap("vis_pooled", visual_inputs.mean((0, 2, 3, 4)))
        vis_features = F.normalize(self.v_proj(visual_outputs), dim=-1, p=2)
        if self.config.stage == 1:
            return dict(text_features=text_features, vis_features=vis_features)

        text_input_ids = text_input_ids.repeat(clip_num, 1, 1)  # clip-major: row = clip * B + b
        text_input_mask = text_input_mask.repeat(clip_num, 1)
        visual_inputs = visual_inputs.reshape(clip_num * b, frm_num, h, w, c)
        sequence_output, pooled_output = self.bert.forward_stage2(clip_num, text_input_ids, visual_inputs,
                                                                  text_input_mask)
        txt_len = text_input_mask.shape[1]
        vtoken_output = sequence_output[:, :, txt_len:, :]
        if self.pool_method == "mean":
            sequence_output, pooled_output = sequence_output.mean(0), pooled_output.mean(0)
        elif self.pool_method == "max":
            sequence_output, pooled_output = sequence_output.max(0)[0], pooled_output.max(0)[0]
        elif self.pool_method == "lse":
            sequence_output = torch.logsumexp(sequence_output, dim=0)
            pooled_output = torch.logsumexp(pooled_output, dim=0)
        else:
            raise ValueError(f"Invalid value for pool_method, got {self.pool_method}")
        sequence_output, pooled_output = self.cls(tap("cls_in", sequence_output[:, :txt_len]), pooled_output)
        tap("mlm_logits", sequence_output)
        tap("itm_logits", pooled_output)

        loss_fct = CrossEntropyLoss(reduction="mean")
        mlm_loss, mlm_acc = 0, 0
        if mlm_labels is not None:
            if itm_labels is not None:
                mlm_labels = mlm_labels.clone()
                mlm_labels[itm_labels == 0] = -100
            mlm_loss = loss_fct(sequence_output.view(-1, self.config.vocab_size), mlm_labels.view(-1))
            mlm_mask = mlm_labels != -100
            mlm_acc = None
            if mlm_mask.sum().item() > 0:
                mlm_acc = (sequence_output[mlm_mask].max(dim=-1)[1] == mlm_labels[mlm_mask]).float().mean()
        itm_loss, itm_acc = 0, 0
        if itm_labels is not None:
            itm_loss = loss_fct(pooled_output.view(-1, 2), itm_labels.view(-1))
            itm_acc = (pooled_output.max(dim=-1)[1] == itm_labels).float().mean()
        return dict(vtoken_output=vtoken_output, mlm_acc=mlm_acc, mlm_loss=mlm_loss, itm_acc=itm_acc,
                    itm_loss=itm_loss, text_features=text_features, vis_features=vis_features)


class VideoQAModel(nn.Module):
    """What the original's ``HDVILAForSequenceClassification`` and ``HDVILAForMultipleChoice`` share (they
    duplicate it): the stage-2 encoder and ``classifier`` (Linear D->2D, ReLU, Linear 2D->out) on every clip's
    pooler2 output (after dropout, inactive in eval mode)."""

    def __init__(self, config, num_outputs):
        super().__init__()
        self.config = config
        self.bert = HDVILABaseModel(config)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.classifier = nn.Sequential(nn.Linear(config.hidden_size, config.hidden_size * 2), nn.ReLU(True),
                                        nn.Linear(config.hidden_size * 2, num_outputs))

    def scores(self, visual_inputs, text_input_ids, text_input_mask):
        """visual_inputs (clips, B, 1, H, W, D); text (R, Lt) with R a multiple of B -> head output
        (clips, R, out). Each clip's visual tokens are repeated R / B times in a row (``repeat_tensor_rows_num``)."""
        clip_num, b, frm_num, h, w, c = visual_inputs.shape
        text_input_ids, _ = self.bert.forward_stage1(text_input_ids, text_input_mask)  # pooler1 output discarded
        tap("text_seq_stage1", text_input_ids)
        text_input_ids = text_input_ids.repeat(clip_num, 1, 1)  # clip-major: row = clip * R + r
        text_input_mask = text_input_mask.repeat(clip_num, 1)
        visual_inputs = visual_inputs.reshape(clip_num * b, frm_num, h, w, c)
        visual_inputs = visual_inputs.repeat_interleave(text_input_ids.shape[0] // visual_inputs.shape[0], dim=0)
        _, pooled_output = self.bert.forward_stage2(clip_num, text_input_ids, visual_inputs, text_input_mask)
        hidden = self.classifier[1](self.classifier[0](self.dropout(tap("head_in", pooled_output))))
        return self.classifier[2](tap("head_hidden", hidden))


class HDVILAForSequenceClassification(VideoQAModel):
    """Open-ended video QA: logits (clips, B, num_labels)."""

    def __init__(self, config):
        super().__init__(config, config.num_labels)

    def forward(self, visual_inputs, text_input_ids, text_input_mask, **kwargs):
        """text (B, Lt)."""
        return dict(logits=self.scores(visual_inputs, text_input_ids, text_input_mask))


class HDVILAForMultipleChoice(VideoQAModel):
    """Multiple-choice video QA (``num_labels`` = choices): one score per option, logits (clips, B, num_labels)."""

    def __init__(self, config):
        super().__init__(config, 1)

    def forward(self, visual_inputs, text_input_ids, text_input_mask, **kwargs):
        """text (B * num_labels, Lt), row b * num_labels + i: question b with option i."""
        clip_num, b = visual_inputs.shape[:2]
        logits = self.scores(visual_inputs, text_input_ids, text_input_mask)
        return dict(logits=logits.view(clip_num, b, self.config.num_labels))


class HDVILA(nn.Module):
    mean_value = [123.675, 116.28, 103.53]
    std_value = [58.395, 57.12, 57.375]

    def __init__(self, config, stage=2, transformer_cls=HDVILAForPreTraining):
        super().__init__()
        assert stage in (1, 2)
        config = types.SimpleNamespace(**dict(config, stage=stage))
        self.config, self.stage = config, stage
        self.cnn = ResNet(depth=config.resnet_depth)
        self.cnn_low = ResNet(depth=config.resnet_depth)  # its layer4 is in the state_dict but unused
        self.grid_encoder = nn.Sequential(
            nn.Conv2d(config.backbone_channel_in_size, config.hidden_size, kernel_size=1, bias=False),
            nn.MaxPool2d(kernel_size=2, stride=2), nn.GELU())
        self.grid_encoder_low = nn.Sequential(
            nn.Conv2d(config.backbone_channels[-2], config.hidden_size, kernel_size=1, bias=False), nn.GELU())
        self.timesformer = TimeSformer(depth=config.timesformer_depth, num_frames=7, H=10, W=16,
                                       embed_dim=config.hidden_size, num_heads=config.timesformer_heads)
        self.grid_encoder_combine = nn.Sequential(
            nn.Conv2d(2 * config.hidden_size, config.hidden_size, kernel_size=1, bias=False), nn.GELU())
        self.transformer = transformer_cls(config)

    def normalize(self, images):
        mean = torch.tensor(self.mean_value).view(1, 3, 1, 1).type_as(images)
        std = torch.tensor(self.std_value).view(1, 3, 1, 1).type_as(images)
        return (images - mean) / std

    def forward(self, img_middle, img_other, text_input_ids, text_input_mask, mlm_labels=None, itm_labels=None):
        """img_middle [B, clips, 3, H, W], img_other [B, clips, 6, 3, H/4, W/4], float 0..255 RGB."""
        visual_features = self.extract_features(img_middle, img_other)
        b, clip_num = img_middle.shape[:2]
        c, h, w = visual_features.shape[-3:]
        visual_features = visual_features.reshape(b, clip_num, 1, c, h, w).permute(1, 0, 2, 4, 5, 3)
        tap("transformer_visual_inputs", visual_features)
        return self.transformer(visual_inputs=visual_features, text_input_ids=text_input_ids,
                                text_input_mask=text_input_mask, mlm_labels=mlm_labels, itm_labels=itm_labels)

    def extract_features(self, img_middle, img_other):
        b, clip_num, c, h, w = img_middle.shape
        img_middle = self.normalize(img_middle.reshape(-1, c, h, w))
        _, _, frm_num, _, h_, w_ = img_other.shape
        frm_num = frm_num + 1
        img_other = self.normalize(img_other.reshape(-1, c, h_, w_))

        stage_features = self.cnn(img_middle)
        tap("hr_stage3", stage_features[-2])
        tap("hr_stage4", stage_features[-1])
        img_middle = tap("hr_grid", self.grid_encoder(stage_features[-1]))
        middle_feature_3 = tap("hr_stage3_down", F.interpolate(stage_features[-2], scale_factor=1 / 4,
                                                               recompute_scale_factor=False))
        middle_feature_3 = tap("hr_stage3_down_grid", self.grid_encoder_low(middle_feature_3))

        img_other = tap("lr_stage3", self.cnn_low.forward_to_stage(img_other))
        img_other = tap("lr_grid", self.grid_encoder_low(img_other))

        middle_feature_3 = middle_feature_3.reshape(-1, 1, *middle_feature_3.shape[-3:])
        img_other = img_other.reshape(-1, frm_num - 1, *img_other.shape[-3:])
        half = int(frm_num / 2)
        temporal_feature = tap("timesformer_in", torch.cat((img_other[:, :half], middle_feature_3,
                                                            img_other[:, half:]), 1))
        temporal_feature = tap("timesformer_out", self.timesformer(temporal_feature))[:, half]
        return tap("middle_feature", self.grid_encoder_combine(torch.cat((img_middle, temporal_feature), 1)))
