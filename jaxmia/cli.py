"""The ``jaxmia`` command line: parse, call one library function, print a summary.

All logic lives in importable modules; each command here is a thin wrapper.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click


class CleanErrors(click.Group):
    """Turns expected input errors into one line ``<prog>: error: ...`` naming the culprit, exit 2.

    Scripts with their own command groups subclass it and set ``prog``.
    """

    prog = "jaxmia"

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (ValueError, FileNotFoundError, KeyError, OSError) as err:
            msg = err.args[0] if isinstance(err, KeyError) and err.args else err
            click.echo(f"{self.prog}: error: {msg}", err=True)
            sys.exit(2)


@click.group(cls=CleanErrors)
@click.version_option(package_name="jaxmia")
@click.option("--compile-cache", "compile_cache_dir", type=click.Path(file_okay=False), default=None,
              help="persistent XLA compile cache [default: $JAXMIA_COMPILE_CACHE or ~/.cache/jaxmia/xla]")
@click.option("--no-compile-cache", is_flag=True, help="compile every program afresh (no persistent cache)")
@click.option("--cpu-devices", default=None, metavar="N|auto",
              help="JAX devices a CPU host is split into, the batch sharded over them (XLA:CPU runs a "
                   "convolution on one thread) [default: $JAXMIA_CPU_DEVICES or auto = one per usable core]")
def main(compile_cache_dir, no_compile_cache, cpu_devices):
    """Membership and dataset inference for diffusion models (CDI, DRC, SecMI, PIA)."""
    from jaxmia import compile_cache  # compile once: a second run loads its programs (jaxmia/compile_cache.py)
    from jaxmia import host_devices  # every core of a CPU host (jaxmia/host_devices.py)

    host_devices.configure(cpu_devices)
    compile_cache.configure(compile_cache_dir, off=no_compile_cache)


# ---- commands are registered below, one block per area --------------------------------------


def model_options(command):
    """``--scheduler`` and ``--family``: what every command that takes MODEL accepts."""
    command = click.option(
        "--family", default=None, metavar="NAME",
        help="Model family (configs/families/NAME.toml, or a .toml path): fills what the folder lacks "
             "(e.g. no scheduler config) and refuses what disagrees.")(command)
    return click.option(
        "--scheduler", default=None, type=click.Path(exists=True), metavar="PATH",
        help="A scheduler_config.json, or a folder holding one, to use instead of the model folder's.")(command)


def captions_option(command):
    """``--captions``: what commands that feed a text-conditional model accept."""
    return click.option(
        "--captions", default=None, type=click.Path(exists=True, dir_okay=False), metavar="FILE",
        help="Captions of a text-conditional model's images (.jsonl/.csv/.json: id or file_name -> text), "
             "encoded by the pipeline's tokenizer and text encoder and cached in text_embeddings/ beside the "
             "output [the image folder's metadata.jsonl/.csv].")(command)


def caption_dataset(model, denoiser, dataset, captions, cache_dir, family):
    """A text-conditional model's data set with its captions' embeddings (else unchanged)."""
    from jaxmia.models.text_conditioning import maybe_attach_captions

    return maybe_attach_captions(model, denoiser, dataset, captions=captions, cache_dir=cache_dir, family=family)[0]


def load_model(model, scheduler, family):
    from jaxmia.models import load_denoiser

    return load_denoiser(model, scheduler=scheduler, family=family)


def set_option(*sections: str, example: str):
    """``--set SECTION.FIELD=VALUE`` (repeatable): the one override syntax of every command
    (:func:`jaxmia.config.parse_set`); the sections are those a config file names."""
    return click.option("--set", "sets", multiple=True, metavar="SECTION.FIELD=VALUE",
                        help=f"Override one config field (repeatable; sections: {', '.join(sections)}), "
                             f"e.g. --set {example}. Explicit flags win over --set.")


def parse_sets(sets, sections, *, legacy_section=None, **flags) -> dict:
    """``--set`` items → nested overrides, then the explicit flags (``section__field=value``, None =
    not given) on top: the flags are sugar for ``--set``. An item without a section is read as
    ``legacy_section.FIELD`` with a deprecation message (the old ``features --set FIELD=V`` and
    ``features --set SIGNAL.FIELD=V``: any item whose first name is not one of ``sections``)."""
    from jaxmia.config import Text, parse_set

    items = []
    for item in sets:
        key = str(item).partition("=")[0]
        if legacy_section is not None and "=" in str(item) and key.split(".")[0].strip() not in sections:
            click.echo(f"jaxmia: warning: --set {item} is deprecated; write --set {legacy_section}.{item}", err=True)
            item = f"{legacy_section}.{item}"
        items.append(item)
    nested = parse_set(items, sections=sections)
    for key, value in flags.items():
        if value is not None:
            section, name = key.split("__")
            nested.setdefault(section, {})[name] = Text(value) if isinstance(value, str) else value
    return nested


# ---- drc: degrade, restore, compare ----------------------------------------------------------


@main.command("drc")
@click.argument("model")
@click.argument("data")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Output folder.")
@click.option("--seed", default=0, show_default=True, type=int, help="Root seed of masks and noise.")
@click.option("--batch-size", default=None, type=int, help="Images per step (progress unit; values do not depend on it).")
@click.option("--per-device-batch", default=None, type=int,
              help="Images each device restores per call: the compiled shape [8].")
@click.option("--steps", type=int, default=None, help="Sampling steps K per restoration [50].")
@click.option("--strength", type=float, default=None, help="Start at t = round(s*T) - 1, s in (0, 1] [0.5].")
@click.option("--eta", type=float, default=None, help="0 = DDIM, 1 = DDPM ancestral [0].")
@click.option("--restore", type=click.Choice(["repaint", "invert", "invert_masked", "invert_renoise"]), default=None,
              help="repaint: keyed-noise inpainting; invert_masked: DDIM inversion of the degraded image; "
                   "invert_renoise: the same with the hole re-noised at t_start; invert: DDIM inversion of the "
                   "ORIGINAL image, which sees the hole (a reconstruction attack) [invert_renoise].")
@click.option("--ratios", default=None, help="Hole ratios, comma-separated [0.1,0.2,0.3,0.4,0.5].")
@click.option("--kinds", default=None, help="Mask kinds: center, rect, patches [center,patches].")
@set_option("drc", example="drc.strength=0.3")
@click.option("--evidence", default=4, show_default=True, type=int, help="Images with evidence PNGs.")
@click.option("--embedder", default=None, type=click.Path(exists=True, file_okay=False), metavar="PATH",
              help="A transformers CLIPVisionModel / CLIPModel folder: score by the cosine similarity of the CLIP image "
                   "embeddings of original and restoration (the paper's compare) [pixel metrics only].")
@captions_option
@model_options
def drc_command(model, data, out_dir, seed, batch_size, per_device_batch, steps, strength, eta, restore, ratios, kinds,
                sets, evidence, embedder, captions, scheduler, family):
    """DRC-style membership scores: degrade MODEL's view of DATA, restore, compare.

    Writes OUT/drc_scores.npz (one column per metric and task), evidence PNGs and OUT/config.json.
    """
    from jaxmia.config import write_config_json
    from jaxmia.data import load_dataset
    from jaxmia.drc import DRCConfig, run_drc
    from jaxmia.drc.config import RESTORE_ABOUT

    nested = parse_sets(sets, ("drc",), drc__steps=steps, drc__strength=strength, drc__eta=eta, drc__kinds=kinds,
                        drc__ratios=ratios, drc__restore=restore)
    cfg = DRCConfig.from_dict(nested.get("drc", {}), source="jaxmia drc")
    embed_fn = None
    if embedder is not None:
        from jaxmia.drc import with_embedding_metric
        from jaxmia.models.clip_vision import clip_image_embedder

        cfg, embed_fn = with_embedding_metric(cfg), clip_image_embedder(embedder)
    denoiser = load_model(model, scheduler, family)
    dataset = load_dataset(data, image_shape=denoiser.input_shape)
    dataset = caption_dataset(model, denoiser, dataset, captions, Path(out_dir) / "text_embeddings", family)
    result = run_drc(denoiser, dataset, cfg, out_dir, batch_size=batch_size, per_device_batch=per_device_batch,
                     seed=seed, evidence=evidence, embed_fn=embed_fn)
    write_config_json({"drc": cfg}, Path(out_dir) / "config.json")
    click.echo(f"DRC-style (jaxmia recipe): {result['n_images']} images, {len(result['columns'])} columns, "
               f"{result['network_calls_per_image']} network calls per image, {result['seconds']:.1f}s")
    click.echo(f"restoration: {cfg.restore} (strength {cfg.strength:g}, K = {cfg.steps}, init {cfg.init}): "
               f"{RESTORE_ABOUT[cfg.restore]}")
    click.echo(f"scores: {result['table']}")
    if result["summary"]:
        click.echo(f"evidence: {result['summary']} (+{len(result['evidence'])} per-image grids)")


# ---- features: per-image CDI / MIA signals ----------------------------------------------------


def _int_list(text: str, option: str) -> tuple:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ValueError(f"{option}: expected comma-separated integers, got {text!r}") from None


def _feature_config(sets, preset, *, source: str):
    """``--preset`` and ``--set features.FIELD=VALUE`` / ``features.SIGNAL.FIELD=VALUE`` (a signal's own
    section) → (preset name, :class:`jaxmia.features.FeatureConfig`), parsed by :mod:`jaxmia.config`."""
    from jaxmia import config as typed
    from jaxmia.features import make_config

    values = dict(parse_sets(sets, ("features",), legacy_section="features", features__preset=preset).get("features", {}))
    preset = typed.coerce(values.pop("preset", "cdi"), str, path="features.preset", source=source)
    return preset, typed.apply_overrides(make_config(preset), values, source=source, what="feature config",
                                         prefix="features.")


@main.command("features")
@click.argument("model")
@click.argument("data")
@click.option("--features", "features", default=None,
              help="Comma-separated registered signals (listed by 'jaxmia signals') [the preset's signals].")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Feature table to write (.npz + .json).")
@click.option("--seed", default=0, show_default=True, type=int, help="Root seed of every noise draw.")
@click.option("--batch-size", default=None, type=int,
              help="Images per step: progress and resumable saves (values do not depend on it) [one chunk].")
@click.option("--per-device-batch", default=None, type=int,
              help="Images each data-axis device computes per call: the compiled shape, part of the run's identity [16].")
@click.option("--mesh", "mesh", default=None, metavar="DATA,MODEL",
              help="Device mesh, e.g. 4,2: a model axis > 1 splits large parameters [N,1].")
@click.option("--preset", default=None,
              help="Preset: signals and config values (listed by 'jaxmia signals') [cdi] (= --set features.preset=NAME).")
@set_option("features", example="features.no_mode=reference, or a signal's own section: features.drc.steps=10")
@click.option("--coordinator", default=None, metavar="HOST:PORT",
              help="Join a jax.distributed run [$JAX_COORDINATOR_ADDRESS]; process 0 merges the shards.")
@click.option("--num-processes", default=None, type=int, help="P processes share the ids [$JAX_NUM_PROCESSES].")
@click.option("--process-id", default=None, type=int, help="This process's k in 0..P-1 [$JAX_PROCESS_ID].")
@click.option("--distributed", is_flag=True,
              help="Join a jax.distributed run detected from TPU pod / SLURM / Open MPI.")
@captions_option
@model_options
def features_command(model, data, features, out, seed, batch_size, per_device_batch, mesh, preset, sets,
                     coordinator, num_processes, process_id, distributed, captions, scheduler, family):
    """Extract per-image features of DATA under MODEL into a feature table (resumable, shardable).

    Writes OUT (.npz + .json) and OUT.config.json (the effective [features] section)."""
    from jaxmia import config as typed
    from jaxmia.data import load_dataset
    from jaxmia.distributed import extract_sharded, process_layout
    from jaxmia.features.config import preset_signals

    layout = process_layout(coordinator, num_processes, process_id, distributed=distributed)  # before any JAX work
    mesh_shape = None if mesh is None else _int_list(mesh, "--mesh")
    preset, cfg = _feature_config(sets, preset, source="jaxmia features")
    features = ",".join(preset_signals(preset)) if features is None else features
    denoiser = load_model(model, scheduler, family)
    dataset = load_dataset(data, image_shape=denoiser.input_shape)
    dataset = caption_dataset(model, denoiser, dataset, captions, Path(out).parent / "text_embeddings", family)
    run = extract_sharded(denoiser, dataset, features, out=out, layout=layout, seed=seed, batch_size=batch_size,
                          per_device_batch=per_device_batch, mesh_shape=mesh_shape, config=cfg)
    typed.write_config_json({"features": {"preset": preset, **cfg.to_dict()}}, f"{out}.config.json")
    table = run.table
    rate = table.meta["throughput"]["images_per_s"]
    cost = table.meta["unet_evals_per_image"]
    where = out if run.shard is None else f"{run.shard}{' (complete already, reused)' if run.reused else ''}"
    click.echo(f"features: {len(table.ids)} images x {len(table.names)} columns -> {where} "
               f"({cost['forward']} forward + {cost['backward']} backward UNet passes per image"
               + ("" if rate is None else f", {rate:.2f} images/s") + ")")
    if run.shard is not None and run.merged is not None:
        click.echo(f"merged {layout.num_processes} shards: {len(run.merged_table.ids)} images -> {run.merged}")
    elif run.shard is not None and not layout.coordinated:
        click.echo(f"when all {layout.num_processes} shards are written: jaxmia merge --out {out}")


@main.command("signals")
@click.option("--preset", default=None, help="Show columns and costs under this preset's config [cdi].")
@set_option("features", example="features.drc.steps=10")
def signals_command(preset, sets):
    """The registered signals (columns, direction, cost, groups, config read), the presets and the groups."""
    from jaxmia.features.config import PRESET_SIGNALS, PRESETS
    from jaxmia.features.registry import FEATURES, GROUP_DOCS, plan_config

    preset, cfg = _feature_config(sets, preset, source="jaxmia signals")
    click.echo(f"signals (config: preset {preset}):")
    for name, spec in FEATURES.items():
        scfg = plan_config([name], cfg)
        cols = spec.columns(scfg)
        cost = spec.cost(scfg)
        dirs = sorted(set(spec.directions(scfg).values()))
        shown = ", ".join(cols) if len(cols) <= 6 else f"{', '.join(cols[:3])}, ... {cols[-1]}"
        reads = list(spec.reads) + ([f"{name}.*"] if spec.section is not None else [])
        click.echo(f"  {name}: {spec.doc}")
        click.echo(f"      {len(cols)} column(s): {shown}; direction {'/'.join(dirs)}; "
                   f"{cost.forward} forward + {cost.backward} backward passes per image"
                   + ("" if cost.exact else " (nominal)")
                   + (f"; groups {', '.join(spec.groups)}" if spec.groups else "")
                   + (f"; parts {', '.join(spec.parts)}" if spec.parts else "")
                   + (f"; reads {', '.join(reads)}" if reads else ""))
    click.echo("presets:")
    for name, signals in PRESET_SIGNALS.items():
        values = ", ".join(f"{k}={v}" for k, v in PRESETS[name].items()) or "defaults"
        click.echo(f"  {name}: {', '.join(signals)} ({values})")
    click.echo("groups (jaxmia cdi --features): " + "; ".join(f"{g} = {d}" for g, d in GROUP_DOCS.items())
               + "; all = every column; a signal's name = its columns")


# ---- inference: CDI dataset inference and labelled MIA evaluation ----------------------------


@main.command("cdi")
@click.option("--published", required=True, type=click.Path(dir_okay=False), help="Feature table of the published set P.")
@click.option("--unpublished", required=True, type=click.Path(dir_okay=False), help="Feature table of the unpublished set U.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output folder (report.json, plots, scores).")
@click.option("--features", default=None,
              help="Columns or groups the tables record (mia, gm, ml, no, new, all, a signal's name), '+'-joined; "
                   "default: every column.")
@click.option("--test", "test", default=None,
              type=click.Choice(["hybrid", "fixed_score", "permutation", "split", "cdi_reference"]),
              help="all but cdi_reference are calibrated; fixed_score fits no model (docs/inference.md §12) [hybrid].")
@click.option("--alpha", default=None, type=float, help="Decision level (reject when p <= alpha) [0.01].")
@click.option("--permutations", default=None, type=int, help="B of the permutation test [1000].")
@click.option("--alternative", default=None, type=click.Choice(["one-sided", "two-sided"]),
              help="Sidedness for split / cdi_reference (default: one-sided / two-sided).")
@click.option("--seed", default=None, type=int, help="Seeds swaps, splits, pairing and curve resamples [0].")
@click.option("--curve-reps", default=None, type=int, help="Resamples per n of the p-vs-n curve [1000].")
@click.option("--curve-test", default=None, type=click.Choice(["split", "cdi_reference", "permutation"]),
              help="[split]")
@click.option("--no-curve", is_flag=True, help="Skip the sample-count curve (= --set cdi.curve=false).")
@set_option("cdi", example="cdi.permutations=200")
def cdi_command(published, unpublished, out, features, test, alpha, permutations, alternative, seed, curve_reps,
                curve_test, no_curve, sets):
    """CDI dataset inference: was the model trained on the published set? (two feature tables in).

    Defaults are :class:`jaxmia.inference.CdiConfig`'s; OUT/config.json holds the effective [cdi] section."""
    from jaxmia.cdi import cdi_from_files
    from jaxmia.config import write_config_json
    from jaxmia.inference.report import config_from_dict

    nested = parse_sets(sets, ("cdi",), cdi__features=features, cdi__test=test, cdi__alpha=alpha,
                        cdi__permutations=permutations, cdi__alternative=alternative, cdi__seed=seed,
                        cdi__curve=False if no_curve else None, cdi__curve_reps=curve_reps, cdi__curve_test=curve_test)
    config = config_from_dict(nested.get("cdi", {}), source="jaxmia cdi")
    alpha = config.alpha
    result = cdi_from_files(published, unpublished, out, config)
    write_config_json({"cdi": config}, Path(out) / "config.json")
    v = result["verdict"]
    click.echo(f"CDI ({v['method']}, {v['alternative']}): p = {v['p_value']:.4g}, n = {v['n_p']} + {v['n_u']}, "
               f"correct order = {v['is_correct_order']}")
    click.echo(v["decision"])
    if result["pairing"].get("subsampled"):
        click.echo(result["pairing"]["note"])
    curve = result.get("curve") or {}
    if "ns" in curve:
        needed = curve["samples_needed"]
        click.echo(f"samples needed (mean p <= {alpha:g}, {curve['test']} test): "
                   + ("not reached on this grid" if needed is None else f"{needed} per side"))
    click.echo(f"report: {result['outputs']['report']}")


@main.command("mia")
@click.option("--scores", required=True, type=click.Path(dir_okay=False), help="Feature table of per-sample scores.")
@click.option("--labels", required=True, type=click.Path(dir_okay=False),
              help='JSON object id -> 1 (member) / 0 (non-member), e.g. {"img_0001": 1}.')
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output folder (report.json, ROC plots).")
@click.option("--columns", default=None, help="Comma-separated score columns (default: all).")
@click.option("--lower-is-member", "lower", multiple=True, help="Column whose raw score is lower for members (repeatable).")
@click.option("--higher-is-member", "higher", multiple=True, help="Column whose raw score is higher for members (repeatable).")
@set_option("mia", example="mia.fpr_targets=0.01,0.001")
def mia_command(scores, labels, out, columns, lower, higher, sets):
    """Labelled MIA evaluation: AUC, TPR@1%/0.1% FPR, oracle ASR and log-log ROC per score column.

    OUT/config.json holds the effective [mia] section (:class:`jaxmia.inference.MiaConfig`)."""
    from jaxmia import config as typed
    from jaxmia.inference import MiaConfig
    from jaxmia.mia import mia_from_files

    nested = parse_sets(sets, ("mia",), mia__columns=columns, mia__lower_is_member=tuple(lower) or None,
                        mia__higher_is_member=tuple(higher) or None)
    config = typed.from_mapping(MiaConfig, nested.get("mia", {}), source="jaxmia mia", prefix="mia.")
    result = mia_from_files(scores, labels, out, **typed.to_mapping(config))
    typed.write_config_json({"mia": config}, Path(out) / "config.json")
    click.echo(f"MIA evaluation: {result['n_members']} members, {result['n_nonmembers']} non-members")
    for name, m in result["columns"].items():
        rates = "  ".join(f"TPR@{float(f) * 100:g}% {t['tpr']:.4f}" + (" (few false positives)" if t["few_false_positives"] else "")
                          for f, t in m["tpr_at_fpr"].items())
        click.echo(f"  {name}: AUC {m['auc']:.4f}  {rates}  ASR(oracle) {m['asr_oracle']:.4f}")
    click.echo(f"report: {result['outputs']['report']}")


# ---- models: checkpoint conversion -----------------------------------------------------------


@main.command("inspect")
@click.argument("model")
@model_options
@click.option("--json", "as_json", is_flag=True, help="Print the description as JSON.")
def inspect_command(model, scheduler, family, as_json):
    """What jaxmia finds in MODEL and will use: class, parameters, shapes, schedule and its source file,
    prediction type, conditioning, latent codec and scale, weights digest."""
    import json

    from jaxmia.models.summary import describe_model, format_description

    description = describe_model(model, scheduler=scheduler, family=family)
    if as_json:
        click.echo(json.dumps(description, indent=2))
    else:
        click.echo("\n".join(format_description(description)))


@main.command("convert")
@click.argument("src", type=click.Path(exists=True))
@click.option("--to", "dst", required=True, type=click.Path(), help="New (or empty) output folder.")
@click.option("--format", "fmt", default="auto", show_default=True, metavar="FORMAT",
              help="auto (a file is a pytorch-ddpm checkpoint, a folder a diffusers PyTorch folder), pytorch-ddpm, "
                   "diffusers, or an official checkpoint format: dit, uvit, uvit_t2i, ldm (docs/models.md).")
@click.option("--option", "options", multiple=True, metavar="KEY=VALUE",
              help="An option of an official format (repeatable), e.g. --option vae=PATH; unknown keys are refused.")
@click.option("--torch-legacy", is_flag=True,
              help="Official formats: read a legacy (pre-zip) torch pickle with torch.load(weights_only=True).")
@click.option("--ema/--no-ema", default=True, show_default=True, help="pytorch-ddpm: ema_model or net_model weights.")
@click.option("--flagfile", type=click.Path(dir_okay=False), default=None,
              help="pytorch-ddpm: the run's absl flagfile [flagfile.txt beside SRC].")
@click.option("--assume-cifar10-defaults", is_flag=True,
              help="pytorch-ddpm: use the CIFAR-10 hyperparameters for flags the flagfile lacks (or with no flagfile).")
def convert_command(src, dst, fmt, ema, flagfile, assume_cifar10_defaults, options, torch_legacy):
    """Convert a checkpoint into a folder jaxmia loads (Flax msgpack): pytorch-ddpm .pt, a diffusers PyTorch
    folder, or the official checkpoints of DiT, U-ViT and CompVis LDM (read without torch, nothing runs)."""
    import json

    from jaxmia.models.conversion import convert_checkpoint

    parsed = {}
    for item in options:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--option {item!r}: expected KEY=VALUE")
        parsed[key.strip()] = value
    result = convert_checkpoint(src, dst, format=fmt, ema=ema, flagfile=flagfile,
                                assume_cifar10_defaults=assume_cifar10_defaults, options=parsed,
                                torch_legacy=torch_legacy)
    if result["format"] not in ("pytorch-ddpm", "diffusers"):
        click.echo(f"convert: {src} -> {dst} ({result['format']})")
        click.echo(json.dumps({k: v for k, v in result.items() if k != "format"}, indent=2, default=str))
    elif result["format"] == "pytorch-ddpm":
        click.echo(f"convert: {src} [{result['weights']}] -> {dst} (pytorch-ddpm, {result['n_params']:,} params, "
                   f"flags: {result['flags']}; weights sha256 {result['weights_digest'][:16]}...)")
    else:
        parts = ", ".join(f"{name} ({digest[:12]}...)" for name, digest in result["converted"].items())
        click.echo(f"convert: {src} -> {dst} (diffusers; converted {parts}; copied {len(result['copied'])} file(s))")
        if result["skipped_pickles"]:
            click.echo(f"  left out pickle file(s): {', '.join(result['skipped_pickles'])}")


# ---- audit: the end-to-end job of a data owner ---------------------------------------------------


def _audit_config(config_file, sets, **flags):
    from jaxmia.audit.config import SECTIONS, load_config

    return load_config(config_file, parse_sets(sets, SECTIONS, **flags))  # explicit flags win over --set and the file


def _print_verdict(label: str, report: dict) -> None:
    v = report["verdict"]
    word = (report.get("conclusion") or {}).get("headline") or ("TRAINED ON P" if v.get("reject") else "no evidence")
    click.echo(f"{label}: {word}  (p = {v['p_value']:.3g}, {v['method']} test, n = {v['n_p']} per side)")
    null = report.get("null_calibration")
    if null:
        click.echo(f"{' ' * len(label)}  null false-positive rate at alpha={null['alpha']:g}: {null['fpr']:.1%} "
                   f"over {null['trials']} innocent splits of U")


@main.command("audit")
@click.argument("model")
@click.option("--published", "-p", required=True, help="P: the owner's published images (folder, .npz, demo:...)")
@click.option("--unpublished", "-u", required=True, help="U: images of the same kind never published")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="output folder")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="TOML config (see configs/)")
@click.option("--features", default=None, help="feature names for the scoring model (default: cdi)")
@click.option("--n", type=int, default=None, help="images per side")
@click.option("--alpha", type=float, default=None, help="decision level (default 0.01)")
@click.option("--seed", type=int, default=None)
@click.option("--batch-size", type=int, default=None)
@set_option("audit", "features", "cdi", "drc", example="cdi.permutations=200")
@click.option("--quiet", is_flag=True, help="no progress output")
@captions_option
@model_options
def audit_command(model, published, unpublished, out_dir, config_file, features, n, alpha, seed, batch_size, sets,
                  quiet, captions, scheduler, family):
    """Audit MODEL: was it trained on the published set P? Writes report.json and report.html."""
    from jaxmia.audit import run_audit

    cfg = _audit_config(config_file, sets, audit__features=features, audit__n=n, cdi__alpha=alpha,
                        audit__seed=seed, audit__batch_size=batch_size,
                        audit__scheduler=None if scheduler is None else str(Path(scheduler).resolve()),
                        audit__family=family,
                        audit__captions=None if captions is None else str(Path(captions).resolve()))
    report = run_audit(model, published, unpublished, out_dir, cfg, quiet=quiet)
    _print_verdict("verdict", report)
    click.echo(f"report: {report['outputs']['html']}")


@main.command("demo")
@click.option("--out", "out_dir", default="runs/demo", show_default=True, type=click.Path(file_okay=False))
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="TOML config (default: configs/experiments/<target>.toml)")
@click.option("--target", type=click.Choice(["demo", "rgb"]), default="demo", show_default=True,
              help="bundled target: demo (8x8 digits) or rgb (32x32 photo patches)")
@set_option("audit", "features", "cdi", "drc", example="audit.null_splits=50")
@click.option("--quiet", is_flag=True)
def demo_command(out_dir, config_file, target, sets, quiet):
    """Audit a bundled target twice: P = its members (guilty), P = non-members (innocent)."""
    import time

    from jaxmia.audit.config import SECTIONS
    from jaxmia.audit.demo import demo_config, run_demo

    start = time.perf_counter()
    cfg = demo_config(config_file, parse_sets(sets, SECTIONS), target=target)
    reports = run_demo(out_dir, cfg, quiet=quiet, target=target)
    click.echo("")
    _print_verdict("guilty case   (P = members)    ", reports["guilty"])
    _print_verdict("innocent case (P = non-members)", reports["innocent"])
    click.echo(f"reports: {out_dir}/guilty/report.html, {out_dir}/innocent/report.html "
               f"({time.perf_counter() - start:.0f} s)")


# ---- distributed: merging the shards of a sharded extraction -----------------------------------


@main.command("merge")
@click.argument("shards", nargs=-1, type=click.Path(dir_okay=False))
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Merged feature table (.npz + .json).")
def merge_command(shards, out):
    """Merge SHARDS (default: OUT.shard-*-of-*.npz) of a sharded 'jaxmia features' run into OUT."""
    from jaxmia.distributed import find_shards, merge_shards

    table = merge_shards(list(shards) or find_shards(out), out=out)
    click.echo(f"merge: {table.meta['n_processes']} shards, {len(table.ids)} images x {len(table.names)} columns "
               f"-> {out}")
