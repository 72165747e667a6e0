"""SAM2's prompt encoder, mask decoder and memory encoder with fewer host ops, computing the same.

In 3D training every tracked slice and every group of prompted slices runs these heads once,
and the activation checkpoint runs them again in the backward pass: at 13 organs on an 8-slice
clip they issued about half of a step's aten ops, each a host-side dispatch whatever its size.
Here the same arithmetic goes out in fewer, larger ops:

- the decoder transformer keeps tokens and image rows as (B N, C) and (B HW, C) matrices from
  entry to exit: a projection is one ``addmm`` (a linear on (B, N, C) reshapes in and out), the
  projections that read the same rows are one matmul over their weights concatenated at call time,
  and the image rows' encoding is added once per layer where Meta adds it for each attention;
- the linears stay ``F.linear`` with autograd's own backward: a custom ``autograd.Function``
  differentiating them (or the joins of parameters) in fewer ops was tried and cost more host
  time than it saved (Python's Function call, ~20-40 us per linear or join on the CPU, over the
  C++ ops it spares), so the op count it bought would have been a worse step;
- ``LayerNorm2d`` (13 elementwise ops forward, about twice as many backward) is one fused
  ``layer_norm`` over the channels, read through a permuted view (same normalisation; the fused
  kernel's summation order differs in the last bits);
- the decoder's four hypernetwork MLPs (12 linears) run as one batched matmul per layer over
  their weights stacked at call time, so parameters and state-dict keys stay as they are;
- the decoder's dense positional encoding (a function of the embedding size and a constant
  buffer, recomputed by Meta at every call) is computed once per size, device and buffer
  version; it is not repeated over the batch (the transformer broadcasts it);
- point prompts take their label embeddings from one table (``not_a_point`` and the four
  point embeddings) by index, instead of five ``torch.where`` passes over every point; every
  embedding still receives a gradient (zero when unused), as in Meta's code, so AdamW's weight
  decay treats them the same;
- the memory encoder's ConvNeXt blocks normalise straight into the channels-last layout their
  linears read, and its sine positional encoding is a cached map expanded over the batch (a
  view) instead of a copy per object.

Installed by swapping the classes of Meta's modules in place (:func:`use_lean_heads`), as
:mod:`~medsam2_hpc.models.memory_attention` does: the ``sam2`` package is not modified, and
checkpoints load as before.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from sam2.modeling.memory_encoder import CXBlock
from sam2.modeling.position_encoding import PositionEmbeddingSine
from sam2.modeling.sam.mask_decoder import MaskDecoder
from sam2.modeling.sam.prompt_encoder import PromptEncoder
from sam2.modeling.sam.transformer import Attention, TwoWayAttentionBlock, TwoWayTransformer
from sam2.modeling.sam2_utils import LayerNorm2d
from torch import Tensor

__all__ = ["LeanLayerNorm2d", "LeanTwoWayTransformer", "LeanTwoWayAttentionBlock",
           "LeanMaskDecoder", "LeanPromptEncoder", "LeanCXBlock",
           "SharedSinePE", "use_lean_heads"]


class LeanLayerNorm2d(LayerNorm2d):
    """Meta's channel LayerNorm of (N, C, H, W) as one fused ``layer_norm`` on an NHWC view."""

    def forward(self, x: Tensor) -> Tensor:
        out = F.layer_norm(x.permute(0, 2, 3, 1), self.weight.shape, self.weight, self.bias, self.eps)
        return out.permute(0, 3, 1, 2).to(x.dtype)  # autocast runs layer_norm in fp32; keep x's type


class LeanTwoWayTransformer(TwoWayTransformer):
    """Meta's decoder transformer on row matrices: tokens (B N, C) and image rows (B HW, C).

    Between layers nothing is reshaped (one view at entry and exit), projections on 2-D rows are
    one ``addmm`` each, and the image's positional encoding is broadcast over the batch once.
    """

    def forward(self, image_embedding: Tensor, image_pe: Tensor, point_embedding: Tensor
                ) -> tuple[Tensor, Tensor]:
        """Meta's ``forward``: same inputs, same (B, N, C) and (B, HW, C) outputs."""
        b, c, h, w = image_embedding.shape
        n = point_embedding.shape[1]
        keys = image_embedding.permute(0, 2, 3, 1).reshape(b * h * w, c)
        key_pe = image_pe.permute(0, 2, 3, 1).expand(b, -1, -1, -1).reshape(b * h * w, c)
        query_pe = point_embedding.reshape(b * n, c)
        queries = query_pe
        for layer in self.layers:
            queries, keys = layer(queries, keys, query_pe, key_pe, b)
        final = self.final_attn_token_to_image
        q, = _project(queries + query_pe, b, final.num_heads, final.q_proj)
        k, = _project(keys + key_pe, b, final.num_heads, final.k_proj)
        v, = _project(keys, b, final.num_heads, final.v_proj)
        queries = self.norm_final_attn(queries + _attend(final, q, k, v))
        return queries.view(b, n, c), keys.view(b, h * w, c)


class LeanTwoWayAttentionBlock(TwoWayAttentionBlock):
    """Meta's block on row matrices (called by :class:`LeanTwoWayTransformer` only).

    Projections reading the same rows are one matmul over their weights concatenated at call time
    (the self-attention's q and k; the image rows with their encoding, which the token-to-image
    attention reads as keys and the image-to-token one as queries: Meta adds that encoding twice).
    """

    def forward(self, queries: Tensor, keys: Tensor, query_pe: Tensor, key_pe: Tensor, batch: int
                ) -> tuple[Tensor, Tensor]:
        """Meta's ``forward`` on (B N, C) tokens and (B HW, C) image rows; ``batch`` is B."""
        sa, t2i, i2t = self.self_attn, self.cross_attn_token_to_image, self.cross_attn_image_to_token
        if self.skip_first_layer_pe:
            queries = _attend(sa, *_project(queries, batch, sa.num_heads, sa.q_proj, sa.k_proj, sa.v_proj))
        else:
            q, k = _project(queries + query_pe, batch, sa.num_heads, sa.q_proj, sa.k_proj)
            v, = _project(queries, batch, sa.num_heads, sa.v_proj)
            queries = queries + _attend(sa, q, k, v)
        queries = self.norm1(queries)

        k, image_q = _project(keys + key_pe, batch, t2i.num_heads, t2i.k_proj, i2t.q_proj)
        q, = _project(queries + query_pe, batch, t2i.num_heads, t2i.q_proj)
        v, = _project(keys, batch, t2i.num_heads, t2i.v_proj)
        queries = self.norm2(queries + _attend(t2i, q, k, v))
        queries = self.norm3(queries + self.mlp(queries))

        k, = _project(queries + query_pe, batch, i2t.num_heads, i2t.k_proj)
        v, = _project(queries, batch, i2t.num_heads, i2t.v_proj)
        keys = self.norm4(keys + _attend(i2t, image_q, k, v))
        return queries, keys


def _project(rows: Tensor, batch: int, heads: int, *projs: torch.nn.Linear) -> tuple[Tensor, ...]:
    """(B N, C) rows through each projection, split into heads: (B, heads, N, D / heads) each.

    Several projections (equal output sizes) run as one matmul over their concatenated weights.
    """
    if len(projs) == 1:
        weight, bias = projs[0].weight, projs[0].bias
    else:
        weight, bias = torch.cat([p.weight for p in projs]), torch.cat([p.bias for p in projs])
    out = F.linear(rows, weight, bias)
    out = out.view(batch, rows.shape[0] // batch, len(projs) * heads, -1).transpose(1, 2)
    return (out,) if len(projs) == 1 else out.split(heads, dim=1)


def _attend(attn: Attention, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """``attn``'s attention of projected (B, heads, N, d) inputs and its output projection: (B N, C)."""
    out = F.scaled_dot_product_attention(q, k, v, dropout_p=attn.dropout_p if attn.training else 0.0)
    out = out.transpose(1, 2).reshape(-1, attn.internal_dim)
    return F.linear(out, attn.out_proj.weight, attn.out_proj.bias)


class LeanMaskDecoder(MaskDecoder):
    """``MaskDecoder`` whose hypernetwork MLPs run batched and whose positional encoding broadcasts."""

    def predict_masks(self, image_embeddings: Tensor, image_pe: Tensor, sparse_prompt_embeddings: Tensor,
                      dense_prompt_embeddings: Tensor, repeat_image: bool,
                      high_res_features: list[Tensor] | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Meta's ``predict_masks``: same inputs, same outputs."""
        s = 1 if self.pred_obj_scores else 0
        first = [self.obj_score_token.weight] if s else []
        output_tokens = torch.cat([*first, self.iou_token.weight, self.mask_tokens.weight])
        b = sparse_prompt_embeddings.size(0)
        tokens = torch.cat([output_tokens.unsqueeze(0).expand(b, -1, -1), sparse_prompt_embeddings], dim=1)
        if repeat_image:
            src = torch.repeat_interleave(image_embeddings, b, dim=0)
        else:
            if image_embeddings.shape[0] != b:
                raise ValueError("LeanMaskDecoder: image embeddings and prompts differ in batch size")
            src = image_embeddings
        src = src + dense_prompt_embeddings
        if image_pe.size(0) != 1:
            raise ValueError("LeanMaskDecoder: image_pe should have batch size 1 (from get_dense_pe())")
        b, c, h, w = src.shape
        hs, src = self.transformer(src, image_pe, tokens)  # the (1, HW, C) encoding broadcasts there
        iou_token_out = hs[:, s, :]
        mask_tokens_out = hs[:, s + 1:s + 1 + self.num_mask_tokens, :]

        src = src.transpose(1, 2).view(b, c, h, w)
        if not self.use_high_res_features:
            upscaled = self.output_upscaling(src)
        else:
            dc1, ln1, act1, dc2, act2 = self.output_upscaling
            feat_s0, feat_s1 = high_res_features
            upscaled = act1(ln1(dc1(src) + feat_s1))
            upscaled = act2(dc2(upscaled) + feat_s0)
        hyper_in = self._hypernetworks(mask_tokens_out)
        b, c, h, w = upscaled.shape
        masks = torch.bmm(hyper_in, upscaled.view(b, c, h * w)).view(b, -1, h, w)

        iou_pred = self.iou_prediction_head(iou_token_out)
        if self.pred_obj_scores:
            object_score_logits = self.pred_obj_score_head(hs[:, 0, :])
        else:
            object_score_logits = 10.0 * iou_pred.new_ones(iou_pred.shape[0], 1)
        return masks, iou_pred, mask_tokens_out, object_score_logits

    def _hypernetworks(self, tokens: Tensor) -> Tensor:
        """The M mask tokens' MLPs (B, M, C) -> (B, M, C/8) as one ``baddbmm`` per layer.

        Column layout (M, features, B): ``W x + b`` needs no transposed weight, and the biases
        broadcast along the batch.
        """
        mlps = self.output_hypernetworks_mlps
        x = tokens.permute(1, 2, 0)
        depth = len(mlps[0].layers)
        for j in range(depth):
            weight = torch.stack([mlp.layers[j].weight for mlp in mlps])
            bias = torch.stack([mlp.layers[j].bias for mlp in mlps]).unsqueeze(-1)
            x = torch.baddbmm(bias, weight.to(x.dtype), x)
            if j < depth - 1:
                x = mlps[0].act(x)
        if mlps[0].sigmoid_output:
            x = torch.sigmoid(x)
        return x.permute(2, 0, 1)


class LeanPromptEncoder(PromptEncoder):
    """``PromptEncoder`` with a cached dense encoding and label embeddings taken by index.

    Point labels are SAM2's: -1 padding, 0/1 negative/positive click, 2/3 box corners.
    """

    def get_dense_pe(self) -> Tensor:
        """Meta's dense positional encoding (1, C, h, w), computed once per size, device and buffer."""
        gauss = self.pe_layer.positional_encoding_gaussian_matrix
        key = (tuple(self.image_embedding_size), gauss.device, gauss.dtype, gauss.data_ptr(), gauss._version)
        cache = self.__dict__.setdefault("_dense_pe", {})
        if key not in cache:
            cache.clear()  # the buffer moved or changed: earlier entries are stale
            with torch.inference_mode(False), torch.no_grad():  # a plain tensor, usable with autograd later
                cache[key] = super().get_dense_pe()
        return cache[key]

    def _embed_points(self, points: Tensor, labels: Tensor, pad: bool) -> Tensor:
        """Meta's point embeddings: encoded coordinates (zero for padding) plus the label's embedding."""
        table = torch.cat([self.not_a_point_embed.weight, *[e.weight for e in self.point_embeddings]])
        encoded = self.pe_layer._pe_encoding(_normalised(points + 0.5, self.input_image_size).to(torch.float))
        encoded = encoded.masked_fill((labels == -1).unsqueeze(-1), 0.0)
        embedding = encoded + F.embedding(labels.long() + 1, table)
        if pad:  # Meta appends a padding point (label -1): its embedding is not_a_point's
            embedding = torch.cat([embedding, table[:1].expand(embedding.shape[0], 1, -1)], dim=1)
        return embedding

    def forward(self, points: tuple[Tensor, Tensor] | None, boxes: Tensor | None, masks: Tensor | None
                ) -> tuple[Tensor, Tensor]:
        """Meta's ``forward`` without its empty first tensor (one op less per call)."""
        bs = self._get_batch_size(points, boxes, masks)
        sparse = []
        if points is not None:
            sparse.append(self._embed_points(*points, pad=boxes is None))
        if boxes is not None:
            sparse.append(self._embed_boxes(boxes))
        if not sparse:
            sparse_embeddings = torch.empty((bs, 0, self.embed_dim), device=self._get_device())
        else:
            sparse_embeddings = sparse[0] if len(sparse) == 1 else torch.cat(sparse, dim=1)
        if masks is not None:
            dense_embeddings = self._embed_masks(masks)
        else:
            dense_embeddings = self.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(
                bs, -1, self.image_embedding_size[0], self.image_embedding_size[1])
        return sparse_embeddings, dense_embeddings


def _normalised(points: Tensor, size: tuple[int, int]) -> Tensor:
    """x / W and y / H as Meta divides them, with no tensor made on the host (that would wait for
    the device): one division by a scalar for SAM2's square inputs."""
    h, w = size
    if h == w:
        return points / w
    scale = torch.full((2,), float(w), device=points.device)
    scale[1] = h
    return points / scale


class LeanCXBlock(CXBlock):
    """Meta's ConvNeXt block, normalising straight into the channels-last layout its linears read."""

    def forward(self, x: Tensor) -> Tensor:
        inp = x
        x = self.dwconv(x).permute(0, 2, 3, 1)
        norm = self.norm
        x = F.layer_norm(x, norm.weight.shape, norm.weight, norm.bias, norm.eps).to(inp.dtype)
        x = self.pwconv2(self.act(self.pwconv1(x)))
        if self.gamma is not None:
            x = self.gamma * x
        return inp + self.drop_path(x.permute(0, 3, 1, 2))


class SharedSinePE(PositionEmbeddingSine):
    """Meta's sine encoding of a feature map, one cached map expanded over the batch (a view)."""

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        cache = self.__dict__.setdefault("_shared", {})
        key = (x.shape[-2], x.shape[-1], x.device)
        if key not in cache:
            with torch.inference_mode(False):
                cache[key] = self._pe(1, x.device, *key[:2]).clone()
        return cache[key].expand(x.shape[0], -1, -1, -1)


_SWAPS = ((LayerNorm2d, LeanLayerNorm2d), (MaskDecoder, LeanMaskDecoder),
          (TwoWayTransformer, LeanTwoWayTransformer), (TwoWayAttentionBlock, LeanTwoWayAttentionBlock),
          (PromptEncoder, LeanPromptEncoder), (CXBlock, LeanCXBlock), (PositionEmbeddingSine, SharedSinePE))


def use_lean_heads(model: torch.nn.Module) -> int:
    """Swap the classes of ``model``'s prompt encoder, mask decoder and memory encoder parts (not
    the image encoder's) to the lean ones above. Returns how many modules changed."""
    changed = 0
    for name in ("sam_prompt_encoder", "sam_mask_decoder", "memory_encoder"):
        part = getattr(model, name, None)
        for module in part.modules() if part is not None else ():
            lean = next((new for old, new in _SWAPS if type(module) is old), None)
            if lean is not None:
                module.__class__ = lean
                changed += 1
    return changed
