"""The notebook templates of the Generate, Compare and Walkthrough pages: for each, (what it shows,
compute cell, figure expression), the `body` app.notebooks.notebook takes. Each compute cell runs
after the notebook's parameters and load cells (model, tok, ids, edit, labels, idx) and leaves in
`arrays` exactly the tables app.export_generation exports, under the same names, recomputed with
the gpt/ API only. Plain strings: nothing here runs in the app.
"""
from __future__ import annotations

GENERATE = '''\
from gpt.compare import kl_per_position
from gpt.generate import sampling_distribution
B, L = model.config.block_size, model.config.n_layer


def replay(seq, edit):
    """Teacher forcing: the raw logits (n, V) each generated token of `seq` was drawn from, and the
    last step's attention row (L, H, context). The logits a KV-cached step saw at position p - 1 are
    the full forward's there (causal attention), so one forward over the sequence gives them all;
    a token past the context window saw only the B tokens before it, so it gets its own forward."""
    seq, steps = list(seq), range(len(ids), len(seq))  # sequence index of each generated token
    last = len(seq) - 1

    def forward(ctx, with_attention):
        rec = Recorder(["logits"] + (["blocks.*.attn.hook_pattern"] if with_attention else []))
        model(torch.tensor([ctx]), rec=rec, edit=edit)  # (1, T) ids
        return rec

    full = forward(seq[:min(last, B)], last <= B)
    rows, att = [], None
    for p in steps:
        rec, q = (full, p - 1) if p <= B else (forward(seq[p - B:p], p == last), B - 1)
        rows.append(rec["logits"][0, q].float())  # (V,)
        if p == last:  # the predicting query's row over its context, every layer and head
            att = torch.stack([rec[f"blocks.{l}.attn.hook_pattern"][0, :, q, :q + 1] for l in range(L)])
    return torch.stack(rows), att  # (n, V), (L, H, context)


def column(prefix, seq, forced, edit):
    seq = list(seq)
    strs = token_strs(tok.token_str, seq)
    out = {prefix + "sequence_id": np.array(seq, dtype=np.int64), prefix + "sequence_token": np.array(strs, dtype=str)}
    if len(seq) == len(ids):
        return out, None
    logits, att = replay(seq, edit)  # (n, V)
    # what each token was drawn from, at the page's settings (a step drawn before they changed was drawn at the old ones)
    probs = sampling_distribution(logits, TEMPERATURE, TOP_K, TOP_P)  # (n, V)
    chosen = torch.tensor(seq[len(ids):])  # (n,)
    top_p, top_i = torch.topk(probs, min(K, probs.size(-1)), dim=-1)  # (n, K)
    top_i = top_i.masked_fill(top_p <= 0, -1)  # a token that could not be drawn has no id
    out.update({prefix + "step_token_id": chosen.numpy(),
                prefix + "step_prob": probs.gather(1, chosen[:, None])[:, 0].numpy(),
                prefix + "step_forced": np.array(forced, dtype=np.int64),
                prefix + "step_top_prob": top_p.numpy(), prefix + "step_top_id": top_i.numpy(),
                prefix + "step_top_token": np.vectorize(lambda i: tok.token_str(int(i)) if i >= 0 else "",
                                                        otypes=[str])(top_i.numpy()),
                prefix + "last_step_attention": att.numpy()})
    return out, logits


if STEER is None:
    arrays, _ = column("", SEQUENCE, FORCED, edit)
else:  # the steered column adds alpha x the vector (gpt.steering) on top of the sidebar's edit
    from gpt.steering import from_vector, steering_edit
    sv = from_vector(model, torch.tensor(STEER["vector"]), STEER["layer"], STEER["site"], "the app's vector")
    steer = steering_edit(model, sv, STEER["alpha"], STEER["layer"], STEER["site"])
    arrays, default_logits = column("default_", SEQUENCE, FORCED, edit)
    steered, steered_logits = column("steered_", STEERED_SEQUENCE, STEERED_FORCED, (edit + steer) if edit else steer)
    arrays.update(steered)
    n = 0 if default_logits is None else len(default_logits)
    arrays["kl"] = (kl_per_position(steered_logits, default_logits).numpy() if n  # KL(steered || default), nats
                    else np.zeros(0))'''

GENERATE_FIGURE = ('go.Figure([go.Scatter(y=v, name=k, mode="lines+markers") for k, v in arrays.items() '
                   'if k.endswith("step_prob")], layout=dict(title="probability of each generated token", '
                   'xaxis=dict(title="generated token"), yaxis=dict(title="p")))')

COMPARE = '''\
from gpt import compare, heads
from gpt.analysis import NEEDS, logit_lens
from gpt.generate import sampling_distribution
model_b, tok_b, _ = load(CHECKPOINT_B)
model_b.eval()
ids_b = list(IDS_B) if IDS_B is not None else tok_b.encode(PROMPT_B)
edit_b = Edits.from_spec(EDIT_SPEC_B) if EDIT_SPEC_B else None
names = ["blocks.*.attn.hook_pattern", *NEEDS["logit_lens"], "logits"]
sides = {}
for tag, m, t, i, e in (("a", model, tok, ids, edit), ("b", model_b, tok_b, ids_b, edit_b)):
    rec = Recorder(names)
    m(torch.tensor([i]), rec=rec, edit=e)  # (1, T) ids
    sides[tag] = (m, t, i, rec)
comp = compare.comparable(tok, tok_b, model.config, model_b.config, token_strs(tok.token_str, ids),
                          token_strs(tok_b.token_str, ids_b))  # what lines up, and why not
n, (ra, rb) = comp.n, (sides["a"][3], sides["b"][3])
arrays = {f"loss_{tag}": compare.loss_per_position(s[3]["logits"], s[2]).numpy() for tag, s in sides.items()}
if comp.kl:
    arrays["kl"] = compare.kl_per_position(ra["logits"], rb["logits"], n).numpy()  # KL(A || B), nats
pa = ra[f"blocks.{LAYER}.attn.hook_pattern"][0, HEAD].float()  # (Ta, Ta)
pb = rb[f"blocks.{LAYER}.attn.hook_pattern"][0, HEAD].float()  # (Tb, Tb)
arrays.update(pattern_a=pa.numpy(), pattern_b=pb.numpy())
if n:
    arrays["pattern_diff"] = compare.pattern_diff(pa, pb, n).numpy()  # B - A, NaN above the diagonal
if n and comp.same_heads:
    arrays["head_distance"] = torch.stack([compare.pattern_distance(ra[f"blocks.{i}.attn.hook_pattern"][0],
                                                                    rb[f"blocks.{i}.attn.hook_pattern"][0], n)
                                           for i in range(model.config.n_layer)]).numpy()  # (L, H)
lens = {tag: logit_lens(s[0], s[3], k=5, ids=s[2]) for tag, s in sides.items()}
for tag, ln in lens.items():
    arrays[f"lens_target_{tag}"] = ln.target_probs.numpy()  # (L+1, T): p(actual next token) per row
if comp.lens:
    arrays["lens_target_diff"] = (lens["b"].target_probs[:, :n] - lens["a"].target_probs[:, :n]).numpy()
for tag, (m, t, i, rec) in sides.items():
    arrays[f"next_{tag}"] = sampling_distribution(rec["logits"][0, min(POS, len(i) - 1)].float(), 1.0).numpy()
    patterns = [rec[f"blocks.{l}.attn.hook_pattern"][0] for l in range(m.config.n_layer)]  # L x (H, T, T)
    for key, v in heads.prompt_head_scores(patterns).items():
        arrays[f"scores_{tag}_{key}"] = v.numpy()  # (L, H)'''

COMPARE_FIGURE = ('go.Figure([go.Scatter(y=arrays[f"loss_{t}"], name=f"loss {t.upper()}") for t in "ab"] + '
                  '([go.Bar(y=arrays["kl"], name="KL(A || B)")] if "kl" in arrays else []), '
                  'layout=dict(title="per position: each side\'s loss and KL(A || B)", yaxis=dict(title="nats")))')

WALKTHROUGH = '''\
from gpt import analysis
from gpt.heads import attention_steps
p = f"blocks.{LAYER}."
SITES = {"ids": [], "tok_emb": ["hook_embed"], "pos_emb": ["hook_pos_embed"], "embed": ["blocks.0.hook_resid_pre"],
         "ln1": [p + "ln1.hook_normalized"],
         "attn": [p + "attn.hook_" + s for s in ("q", "k", "v", "attn_scores", "pattern", "z")] + [p + "hook_attn_out"],
         "resid_mid": [p + "hook_resid_pre", p + "hook_attn_out", p + "hook_resid_mid"], "ln2": [p + "ln2.hook_normalized"],
         "mlp": [p + "mlp.hook_post", p + "hook_mlp_out"],
         "resid_post": [p + "hook_resid_mid", p + "hook_mlp_out", p + "hook_resid_post"],
         "ln_f": ["ln_final.hook_normalized"], "logits": ["logits"]}  # what each stage reads; its output last
arrays = {"ids": np.array(ids, dtype=np.int64)}
if STAGE != "ids":
    rec = Recorder(SITES[STAGE])
    model(idx, rec=rec, edit=edit)
    got = lambda name: rec[name][0].float()  # batch dim dropped: (T, ...)
    out = got(SITES[STAGE][-1])  # (T, X)
    if STAGE in ("ln1", "ln2", "ln_f"):  # the real output: the normalized x times the gain, plus the bias
        ln = model.transformer.ln_f if STAGE == "ln_f" else getattr(model.transformer.h[LAYER], "ln_" + STAGE[2])
        out = out * ln.weight.detach().float().cpu() + (0 if ln.bias is None else ln.bias.detach().float().cpu())
    arrays["values"] = out.numpy()
    if STAGE in ("resid_mid", "resid_post"):  # before + added = after
        before, added = got(SITES[STAGE][0]), got(SITES[STAGE][1])
        arrays.update(norm_before=before.norm(dim=-1).numpy(), norm_added=added.norm(dim=-1).numpy(),
                      norm_after=out.norm(dim=-1).numpy())
    else:
        arrays["norm"] = out.norm(dim=-1).numpy()  # (T,)
    if STAGE == "mlp":
        arrays["mlp_hidden"] = got(p + "mlp.hook_post").numpy()  # (T, 4C)
    if STAGE == "attn":
        arrays["head_norms"] = got(p + "attn.hook_z").norm(dim=-1).numpy()  # (T, H): each head's output
        s = attention_steps(rec, LAYER, HEAD)
        arrays.update({f"attn_{k}": getattr(s, k).numpy() for k in ("q", "k", "v", "z", "raw", "scores", "pattern")})
if len(ids) >= 2:  # the prompt as one training example: x = ids[:-1], y = ids[1:]
    tv = analysis.training_example(model, ids, edit=edit)
    arrays.update(train_loss=tv.per_position.numpy(), train_target_prob=tv.target_prob.numpy(),
                  train_target_rank=tv.target_rank.numpy())'''

WALKTHROUGH_FIGURE = ('go.Figure(go.Heatmap(z=arrays["values"], y=labels, colorscale="RdBu_r", zmid=0) if "values" in arrays '
                      'else go.Bar(x=labels, y=arrays["ids"]), layout=dict(title=f"stage {STAGE}", '
                      'yaxis=dict(autorange="reversed")))')

BODIES: dict[str, tuple[str, str, str]] = {
    "generate": ("each generated token's distribution (at the page's temperature, top-k and top-p), replayed "
                 "by teacher forcing over the same sequence, and the last step's attention", GENERATE, GENERATE_FIGURE),
    "compare": ("two checkpoints (or one model on two prompts) side by side: losses, KL, attention, logit lens, "
                "next-token distributions and head scores", COMPARE, COMPARE_FIGURE),
    "walkthrough": ("one pipeline stage's values at one layer, and the prompt as a training example",
                    WALKTHROUGH, WALKTHROUGH_FIGURE),
}
