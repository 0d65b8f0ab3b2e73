"""Break the library on purpose and check that the test named after each behaviour fails.

Each mutation replaces one piece of source text, runs the tests that guard it, and restores the
file.  A mutation whose tests still pass is a behaviour nothing checks.

    python tests/mutations.py            # all mutations
    python tests/mutations.py grey       # those whose name contains "grey"

Not collected by pytest (the file name does not start with ``test_``); it prints one line per
mutation and exits non-zero if any mutation survived.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

#: name, file, text to replace, replacement, tests that must fail
MUTATIONS = [
    ("grey averages stains", "unetflow/preprocess.py",
     "if config.grey and have in COLOUR_CHANNELS:", "if config.grey:",
     "tests/test_channels.py::test_a_cytoplasm_channel_is_never_averaged_with_a_nuclear_one"),
    ("named channels repeat a grey image", "unetflow/preprocess.py",
     "if have == 1 and not config.grey and config.channel_names is None:", "if have == 1 and not config.grey:",
     "tests/test_channels.py::test_a_cytoplasm_channel_is_never_averaged_with_a_nuclear_one"),
    ("one normalisation for all channels", "unetflow/preprocess.py",
     "lo, hi = np.percentile(flipped, list(config.percentiles), axis=(0, 1))",
     "lo, hi = (np.full(flipped.shape[-1], v) for v in np.percentile(flipped, list(config.percentiles)))",
     "tests/test_channels.py::test_each_channel_is_normalised_to_its_own_percentiles"),
    ("init channels not mapped", "unetflow/train.py",
     "mapped[:, :, c] = kernel[:, :, k]", "mapped[:, :, c] = kernel[:, :, 0] * 0",
     "tests/test_channels.py::test_init_channels_maps_the_first_layer_and_keeps_the_rest"),
    ("init channels ignored", "unetflow/train.py",
     "carry_weights(load_model(Path(init[\"run\"]) / init[\"model\"]), model, init.get(\"input_channels\"))",
     "pass",
     "tests/test_channels.py::test_two_channel_model_from_a_one_channel_source "
     "tests/test_train.py::test_fine_tuning_from_a_run"),
    ("resumed fine-tune forgets its source", "unetflow/train.py",
     'model, initial_epoch = _model(config, run_dir, state, meta.get("init_from"))',
     'model, initial_epoch = _model(config, run_dir, state, None)',
     "tests/test_channels.py::test_fine_tune_killed_before_its_first_checkpoint_resumes_from_the_source"),
    ("resumed run restarts the data stream", "unetflow/train.py",
     "start = initial_epoch * t.steps_per_epoch * t.batch_size", "start = 0",
     "tests/test_train.py::test_resumed_run_continues_the_data_stream_and_keeps_the_best"),
    ("resume trusts the state over the checkpoint", "unetflow/train.py",
     "        if done != initial_epoch:  # killed between writing the state and the model",
     "        if False:",
     "tests/test_train.py::test_checkpoint_and_state_that_disagree_resume_from_the_checkpoint"),
    ("every worker writes", "unetflow/train.py",
     'return resolver.task_type == "worker" and resolver.task_id == 0 and "chief" not in resolver.cluster_spec().as_dict()',
     'return resolver.task_type == "worker"',
     "tests/test_multiworker.py::test_which_worker_is_chief"),
    ("figure names cut short", "unetflow/report.py",
     'return f"{readable}-{hashlib.sha1(name.encode()).hexdigest()[:8]}"', "return readable[:12]",
     "tests/test_report.py::test_figure_names_are_unique_whatever_the_image_names"),
    ("detail window at the corner", "unetflow/viz.py",
     "y, x = (int(v) for v in np.unravel_index(int(np.argmax(inner)), inner.shape))", "y, x = 0, 0",
     "tests/test_report.py::test_detail_window_shows_where_the_objects_are"),
    ("per-step bar in logs", "unetflow/progress.py",
     "return 1 if is_terminal(stream if stream is not None else sys.stdout) else 2", "return 1",
     "tests/test_train.py::test_training_log_is_one_line_per_epoch_when_not_a_terminal"),
    ("tqdm bars in logs", "unetflow/progress.py",
     "    if enabled and is_terminal(stream):", "    if enabled:",
     "tests/test_progress.py tests/test_train.py::test_training_log_is_one_line_per_epoch_when_not_a_terminal"),
    ("manifest only in the current directory", "unetflow/manifest.py",
     "*([Path(folder).expanduser() / manifest] if folder else []), manifest]", "manifest]",
     "tests/test_manifest.py::test_a_config_manifest_is_found_in_the_data_folder"),
    ("label suffixes not stripped", "unetflow/folders.py",
     "            return stem[: -len(suffix)]", "            return stem",
     "tests/test_manifest.py::test_manifest_from_two_folders"),
    ("base config ignored", "unetflow/config.py",
     "    return _merge(_read_yaml(base_path, (*seen, path.resolve())), values)", "    return values",
     "tests/test_config.py::test_base_config_is_the_start_and_the_file_wins"),
    ("seams not blended", "unetflow/tiling.py",
     "return np.clip(np.minimum(x + 1, n - x) / max(ramp, 1), 1e-3, 1.0)", "return np.ones(n, np.float32)",
     "tests/test_predict.py::test_seams_are_blended tests/test_predict.py::test_no_object_split_at_seams"),
    ("overlap below the network's reach", "unetflow/tiling.py",
     "margin = min(tile // 2, max(int(tile * overlap), receptive_radius(mult)))",
     "margin = min(tile // 2, int(tile * overlap))",
     "tests/test_predict.py::test_seams_are_blended"),
    ("receptive radius one short", "unetflow/geometry.py",
     "return down + up + sum(2 ** level for level in range(depth - 1))",
     "return down + up + sum(2 ** level for level in range(depth - 1)) - 1",
     "tests/test_predict.py::test_receptive_radius_is_the_networks_reach"),
    ("test-time flips not undone", "unetflow/tasks/base.py",
     "outputs = outputs[::-1] if flip_y else outputs", "outputs = outputs",
     "tests/test_predict.py::test_tta_unflips_flow_components"),
    ("boundary band widened by a cross", "unetflow/boundary.py",
     "boundary = ndimage.binary_dilation(boundary, np.ones((3, 3), bool), iterations=int(width) - 1)",
     "boundary = ndimage.binary_dilation(boundary, iterations=int(width) - 1)",
     "tests/test_boundary.py::test_width_grows_the_band"),
    ("outlines are the whole masks", "unetflow/formats.py",
     'return np.where(find_boundaries(labels, mode="inner"), labels, 0)', "return labels",
     "tests/test_formats.py::test_cellpose_seg_layout"),
    ("cache key without the entry format's version", "unetflow/precompute.py",
     '"format": CACHE_FORMAT_VERSION,', "",
     "tests/test_precompute.py::test_a_new_algorithm_version_invalidates_the_cache"),
    ("cache key without the tasks' versions", "unetflow/precompute.py",
     '"tasks": {name: task.version for name, task in sorted(TASKS.items())}', '"tasks": sorted(TASKS)',
     "tests/test_precompute.py::test_a_new_algorithm_version_invalidates_the_cache"),
    ("half-written file left behind", "unetflow/io.py",
     "        if os.path.exists(tmp):\n            os.unlink(tmp)\n", "",
     "tests/test_precompute.py::test_killed_while_writing_leaves_no_entry"),
    ("size search: no tie-break", "unetflow/sizing.py",
     "best = min(range(len(found)), key=lambda k: (-agree[k].sum(), consistency[k]))",
     "best = min(range(len(found)), key=lambda k: -agree[k].sum())",
     "tests/test_sizing.py::test_size_search_votes_breaks_ties_stops_early_and_falls_back"),
    ("size search: mean of all", "unetflow/sizing.py",
     "return float(np.exp(np.median(logd[agree[best]]))), int(agree[best].sum())",
     "return float(np.exp(np.median(logd))), int(agree[best].sum())",
     "tests/test_sizing.py::test_size_search_votes_breaks_ties_stops_early_and_falls_back"),
    ("size search: no early stop", "unetflow/sizing.py",
     "if agreeing >= 2 and D * SIZE_BELOW <= size:", "if False:",
     "tests/test_sizing.py::test_size_search_votes_breaks_ties_stops_early_and_falls_back"),
    ("size search: not measured at the agreed size", "unetflow/sizing.py",
     "return d if d > 0 and abs(np.log(d / size)) < np.log(SIZE_AGREEMENT) else size", "return size",
     "tests/test_sizing.py::test_size_search_votes_breaks_ties_stops_early_and_falls_back"),
    ("size search: the last measurement taken blindly", "unetflow/sizing.py",
     "return d if d > 0 and abs(np.log(d / size)) < np.log(SIZE_AGREEMENT) else size", "return d if d > 0 else size",
     "tests/test_sizing.py::test_size_search_votes_breaks_ties_stops_early_and_falls_back"),
    ("size search: smallest candidate first", "unetflow/sizing.py",
     "for D in sorted(candidates, reverse=True):", "for D in sorted(candidates):",
     "tests/test_sizing.py::test_size_search_votes_breaks_ties_stops_early_and_falls_back"),
    ("auto size: first probe not zoomed out", "unetflow/sizing.py",
     "D = SIZE_PROBE_FROM * train_diameter", "D = float(train_diameter)",
     "tests/test_sizing.py::test_auto_size_probes_zoomed_out_first_and_keeps_a_settled_segmentation"),
    ("auto size: probes never zoom in", "unetflow/sizing.py",
     "**kw)) < D / SIZE_PROBE_RANGE", "**kw)) < 0",
     "tests/test_sizing.py::test_auto_size_probes_zoomed_out_first_and_keeps_a_settled_segmentation"),
    ("auto size: a segmentation never settles", "unetflow/sizing.py",
     "if found > 0 and abs(np.log(found / d)) < np.log(SIZE_SETTLED):", "if False:",
     "tests/test_sizing.py::test_auto_size_probes_zoomed_out_first_and_keeps_a_settled_segmentation"),
    ("auto size: any segmentation kept", "unetflow/sizing.py",
     "if found > 0 and abs(np.log(found / d)) < np.log(SIZE_SETTLED):", "if found > 0:",
     "tests/test_sizing.py::test_auto_size_falls_back_on_the_scale_search"),
    ("auto size: passes without end", "unetflow/sizing.py",
     "for _ in range(SIZE_PASSES):", "for _ in range(3):",
     "tests/test_sizing.py::test_auto_size_falls_back_on_the_scale_search"),
    ("auto size: huge images segmented whole", "unetflow/sizing.py",
     "if x.shape[0] * x.shape[1] <= SIZE_WHOLE:", "if True:",
     "tests/test_sizing.py::test_auto_size_falls_back_on_the_scale_search"),
    ("auto size: reports the size found, not the one segmented at", "unetflow/sizing.py",
     "return Sizing(d, factor, raw, labels)", "return Sizing(found, factor, raw, labels)",
     "tests/test_sizing.py::test_auto_is_the_segmentation_at_the_size_it_reports"),
    ("kept segmentation's outputs dropped in evaluation", "unetflow/evaluate.py",
     "yield sized.network_item(x)", "yield x, 1.0",
     "tests/test_sizing.py::test_auto_is_the_segmentation_at_the_size_it_reports"),
    ("size measured in zoomed pixels", "unetflow/sizing.py",
     "return diameters(labels) / factor if labels.max() >= 2 else 0.0",
     "return diameters(labels) if labels.max() >= 2 else 0.0",
     "tests/test_sizing.py::test_the_ready_model_sizes_real_nuclei"),
    ("blocks compose only their own objects", "unetflow/big.py",
     "for nb in [block] + [b for b in neighbours if b.index != block.index]:", "for nb in [block]:",
     "tests/test_big.py::test_a_stack_block_by_block_matches_in_memory"),
    ("block ownership ignores z", "unetflow/big.py",
     "enumerate(zip(block.core, block.context))", "enumerate(zip(block.core[-2:], block.context[-2:]), labels.ndim - 2)",
     "tests/test_big.py::test_a_stack_block_by_block_matches_in_memory"),
    ("z halo as many voxels as y and x", "unetflow/big.py",
     "halos = (int(np.ceil(halo / aniso)), halo, halo)", "halos = (halo, halo, halo)",
     "tests/test_big.py::test_a_stack_block_by_block_matches_in_memory"),
    ("sparse fluorescence read as a bright background", "unetflow/preprocess.py",
     "lo, hi = np.percentile(channel, [0.1, 99.9])", "lo, hi = np.percentile(channel, [1, 99])",
     "tests/test_pipeline.py::test_input_conventions"),
    ("quickstart averages stains", "unetflow/quickstart.py",
     'return [f"input.channels={n}", "input.grey=false", "input.invert_bright_background=false"]', "return []",
     "tests/test_channels.py::test_quickstart_keeps_stains_apart"),
    ("trilinear steps read one corner", "unetflow/dynamics.py",
     "return (one - wz) * ((one - wy) * a + wy * b) + wz * ((one - wy) * d + wy * e)",
     "return (one - wy) * a + wy * b",
     "tests/test_postprocess.py::test_trilinear_following_matches_an_independent_reference"),
    ("volume-slice runs scored as 2-D images", "unetflow/run.py",
     "return bool(self.config.data.volume_slices) or", "return False and",
     "tests/test_volume.py::test_a_2d_model_trains_on_the_slices_of_volumes"),
    ("3-D scores not written where compare reads", "unetflow/evaluate.py",
     "where = dict(volumes=mode, sizing=suffix, tag=tag)", "where = dict(sizing=suffix, tag=tag)",
     "tests/test_volume.py::test_a_2d_model_trains_on_the_slices_of_volumes"),
    ("napari reader drops the voxel size", "unetflow/_napari.py",
     "    if voxel is not None:  # a stack", "    if False:  # a stack",
     "tests/test_napari.py::test_reader_opens_label_stacks_at_their_voxel_size"),
    ("OME-Zarr labels lose the voxel size", "unetflow/formats.py",
     "tuple(min(side, s) for s in labels.shape), scale)", "tuple(min(side, s) for s in labels.shape), None)",
     "tests/test_formats.py::test_ome_zarr_label_volume_keeps_its_voxel_size "
     "tests/test_volume.py::test_predict_cli_on_a_stack_keeps_the_voxel_size"),
    ("3-D cubes overwrite each other", "unetflow/volume.py",
     "out[cube] += pred * weight", "out[cube] = pred * weight",
     "tests/test_volume.py::test_a_3d_network_runs_on_cubes_that_agree_with_the_whole_volume"),
    ("3-D cubes not normalised by their weights", "unetflow/volume.py",
     "return (out / norm)[:shape[0], :shape[1], :shape[2]]", "return out[:shape[0], :shape[1], :shape[2]]",
     "tests/test_volume.py::test_a_3d_network_runs_on_cubes_that_agree_with_the_whole_volume"),
    ("3-D network on the whole volume", "unetflow/volume.py",
     "if len(zs) == len(ys) == len(xs) == 1:", "if True:",
     "tests/test_volume.py::test_a_3d_network_runs_on_cubes_that_agree_with_the_whole_volume"),
    ("volume crops flipped with flips off", "unetflow/volume.py",
     "if config.flips and rng.random() < 0.5:", "if rng.random() < 0.5:",
     "tests/test_volume.py::test_volume_crops_zoom_the_objects_and_carry_their_flows"),
    ("volume crop zoom inverted", "unetflow/volume.py",
     "size = max(2, int(round(config.crop_size / zoom)))", "size = max(2, int(round(config.crop_size * zoom)))",
     "tests/test_volume.py::test_volume_crops_zoom_the_objects_and_carry_their_flows"),
    ("zoomed volume flows interpolated", "unetflow/volume.py",
     'order=1 if kinds[key] == "linear" else 0', 'order=0 if kinds[key] == "nearest" else 1',
     "tests/test_volume.py::test_volume_crops_zoom_the_objects_and_carry_their_flows"),
    ("volume crop flips keep the flow signs", "unetflow/volume.py",
     "flows[..., axis] *= -1  # a flipped axis", "flows[..., axis] *= 1  # a flipped axis",
     "tests/test_volume.py::test_volume_crops_transform_the_flow_vectors"),
    ("volume crop rotations turn the flows the wrong way", "unetflow/volume.py",
     "dy, dx = -dx, dy", "dy, dx = dx, -dy",
     "tests/test_volume.py::test_volume_crops_transform_the_flow_vectors"),
    ("flow3d outputs split in the wrong order", "unetflow/tasks/flow3d.py",
     "flows_to_channels_first(raw[..., :3]), raw[..., 3]", "flows_to_channels_first(raw[..., 1:]), raw[..., 0]",
     "tests/test_volume.py::test_flow3d_outputs_round_trip_to_the_labels"),
    ("flow3d loss for 2-D outputs", "unetflow/tasks/flow3d.py",
     "options.prob_weight, spatial_dims=3)", "options.prob_weight)",
     "tests/test_volume.py::test_a_3d_network_trains_on_volumes_and_segments_them"),
    ("flat loss options of saved runs dropped", "unetflow/config.py",
     "                        own.setdefault(k, v)", "                        pass",
     "tests/test_config.py::test_configs_with_flat_loss_and_head_options_still_load"),
    ("head options of another task accepted", "unetflow/config.py",
     "if name != self.task and task.head_class is not None and getattr(self, name) != task.head_class():",
     "if False:",
     "tests/test_config.py::test_bad_values_and_missing_file "
     "tests/test_tasks.py::test_head_relu_only_for_the_boundary_task"),
]


def run(mutation) -> bool:
    """Apply one mutation, run its tests, restore; True when the tests caught it."""
    name, rel, old, new, tests = mutation
    path = REPO / rel
    source = path.read_text()
    if source.count(old) != 1:
        raise SystemExit(f"{name}: the text to replace occurs {source.count(old)} times in {rel}")
    try:
        path.write_text(source.replace(old, new))
        result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests.split()],
                                cwd=REPO, capture_output=True, text=True)
    finally:
        path.write_text(source)
    return result.returncode != 0


def main(argv) -> int:
    chosen = [m for m in MUTATIONS if not argv or any(a in m[0] for a in argv)]
    survived = []
    for m in chosen:
        caught = run(m)
        print(f"{'caught  ' if caught else 'SURVIVED'} {m[0]}", flush=True)
        if not caught:
            survived.append(m[0])
    print(f"{len(chosen) - len(survived)} caught, {len(survived)} survived")
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
