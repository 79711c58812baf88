#!/usr/bin/env bash
# One GPU session: correctness (GPU tests) then timings, everything logged under $OUT.
#   bash benchmarks/gpu.sh tests       # the GPU kernel tests (pytest -m gpu)
#   bash benchmarks/gpu.sh kernels     # selective scan: benchmarks/kernels.py (KERNEL_ARGS=--no-ref skips the twin;
#                                      #   "--prev .prev" times the kernels exported by benchmarks/prev_kernels.py)
#   bash benchmarks/gpu.sh ss2d ln     # cross-scan / SS2D core (benchmarks/ss2d.py), LayerNorm (benchmarks/layer_norm.py)
#   bash benchmarks/gpu.sh profile     # Nsight Compute on the selective-scan kernels (benchmarks/profile_scan.py;
#                                      #   PROFILE_ARGS="--stages 1,3")
#   bash benchmarks/gpu.sh overhead    # vmbench's training loop vs a bare loop; JPEG / fake loader speed
#   bash benchmarks/gpu.sh ddp         # `vmbench run --gpus N` scaling, 1 -> 2 GPUs (benchmarks/ddp_scaling.py)
#   bash benchmarks/gpu.sh where       # torch.profiler: where VMamba-T's inference and training time goes
#   bash benchmarks/gpu.sh compiled    # the same for torch.compile'd VMamba-T and Swin-T (kernel tables side by side),
#                                      #   then compiled VMamba-T / Swin-T training steps timed (peers.py --compile)
#   bash benchmarks/gpu.sh ctrain      # compiled training steps: VMamba-T with its defaults, without the LayerNorm
#                                      #   backward kernel (lnbwd) and Swin-T, img/s and peak GB; then stage 1 on the map
#   bash benchmarks/gpu.sh convop      # the convolutions as ops of their own in compiled graphs (Inductor's layout
#                                      #   optimisation off): their GPU tests, then training steps of VMamba-T with and
#                                      #   without them and of Swin-T, eager and compiled in one process
#   bash benchmarks/gpu.sh convopinfer # the same for the plain call, then the compiled training step profiled
#   bash benchmarks/gpu.sh grads       # compiled training steps' gradients against eager's, per parameter
#                                      #   (benchmarks/compiled_grads.py; GRADS_ARGS="--fusions a,b --amp bf16")
#   bash benchmarks/gpu.sh map         # the map-layout SS2D inference forward: its GPU tests, the op against the
#                                      #   composition (benchmarks/ss2d_map.py --sweep), VMamba-T eager and compiled
#                                      #   on the composition, the defaults and other variants (peers.py --ss2d-map
#                                      #   off,default,...; MAP_VARIANTS picks)
#   bash benchmarks/gpu.sh maptrain    # the same for the map-layout training path (forward + backward), with
#                                      #   VMamba-T's eager and compiled training steps (MAP_TRAIN_VARIANTS: DELTA-YS:L)
#   bash benchmarks/gpu.sh mapprev     # the map scan against the kernels benchmarks/prev_kernels.py exported into .prev
#                                      #   (inference forward, training forward, backward), then the training table
#   bash benchmarks/gpu.sh fusions     # the fused MLP, fc1 + GELU and conv + SiLU kernels: their GPU tests, each against
#                                      #   the ops it replaces (benchmarks/fusions.py --sweep), VMamba-T eager and
#                                      #   compiled inference with the defaults and with both off (peers.py --fusions
#                                      #   default,none; neither kernel runs in a training step)
#   bash benchmarks/gpu.sh convncu     # Nsight Compute on SS2D's conv + SiLU kernel beside cuDNN's depthwise conv
#                                      #   (benchmarks/fusions.py --parts conv; stage 1's launches come first)
#   bash benchmarks/gpu.sh quick       # vmamba_t / swin_t / convnext_t, inference + training
#   bash benchmarks/gpu.sh graph       # the same, eager and as CUDA-graph replays (host overhead removed)
#   bash benchmarks/gpu.sh models      # the paper suite (benchmarks/models.py), eager sections (MODELS_SECTIONS,
#                                      #   MODELS_ARGS, MODELS_LIMIT change them)
#   bash benchmarks/gpu.sh compile     # the paper suite's torch.compile section (COMPILE_ARGS="--models a,b")
#   bash benchmarks/gpu.sh traingraph  # `vmbench run --cuda-graph`: its GPU tests, then eager vs graphed training
#                                      #   steps (benchmarks/train_graph.py; TRAIN_GRAPH_ARGS="--models a,b")
# Runs from the repository root without installing vmbench (vmbench/kernels links to kernels/);
# wheels the machine lacks (sqlalchemy, fvcore: shared/tools/gpu-wheels) are installed from .whl/ if present.
set -u
OUT=${OUT:-/tmp/vmbench-out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
nvidia-smi --query-gpu=name,uuid,driver_version,memory.total --format=csv,noheader | tee "$OUT/card.txt"  # uuid: which machine
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$OUT/card.txt"
# The GPU tests: one process, whether or not pytest-xdist is installed (pyproject's addopts has -n), quiet, no cache
GPU_PYTEST="python3 -m pytest -o addopts= -m gpu -q -p no:cacheprovider"
step() { local name=$1 limit=$2; shift 2; echo "== $name"; timeout "$limit" "$@" > "$OUT/$name.log" 2>&1; echo "== $name rc=$?"; tail -n 30 "$OUT/$name.log"; }
for what in "$@"; do
  case "$what" in
    tests)   step gpu_tests 420 $GPU_PYTEST tests/test_selective_scan.py \
               tests/test_cross_scan.py tests/test_ss2d.py tests/test_ss2d_map.py tests/test_layer_norm.py ;;
    kernels) step kernels ${KERNEL_LIMIT:-150} python3 benchmarks/kernels.py ${SWEEP:-} ${KERNEL_ARGS:-} ;;
    ss2d)    step ss2d 150 python3 benchmarks/ss2d.py ${SWEEP:-} ${SS2D_ARGS:-} ;;
    ln)      step layer_norm 90 python3 benchmarks/layer_norm.py ;;
    profile) step ncu 150 ncu --clock-control none --section SpeedOfLight --section Occupancy --section LaunchStats \
               --section WarpStateStats --section MemoryWorkloadAnalysis --section SchedulerStats --section InstructionStats \
               -k regex:_scan_ python3 benchmarks/profile_scan.py ${PROFILE_ARGS:-} ;;
    overhead) step overhead 240 python3 benchmarks/overhead.py ;;
    ddp)     step ddp_scaling 360 python3 benchmarks/ddp_scaling.py ${DDP_ARGS:-} ;;
    where)   step where 200 python3 benchmarks/profile_model.py --model vmamba_t --host --python ;;
    ctrain)  step peers_ctrain 300 python3 benchmarks/peers.py --compile --models vmamba_t,swin_t --modes train \
                 --fusions default,mlp+ffn+conv+gelu+convop --name peers_ctrain
               step peers_ctrain_map 200 python3 benchmarks/peers.py --compile --models vmamba_t --peer vmamba_t \
                 --modes train --ss2d-map default,dot-input:3136 --name peers_ctrain_map ;;
    convop)  step convop_tests 150 $GPU_PYTEST -rA tests/test_opaque_ops.py
               step peers_convop_train 420 python3 benchmarks/peers.py --compile on,off --models vmamba_t,swin_t \
                 --modes train --fusions default,lnbwd+mlp+ffn+conv+gelu --name peers_convop_train ;;
    convopinfer) step peers_convop_plain 300 python3 benchmarks/peers.py --compile on,off --models vmamba_t,swin_t \
                 --modes plain --fusions default,lnbwd+mlp+ffn+conv+gelu --name peers_convop_plain
               step where_convop 200 python3 benchmarks/profile_model.py --model vmamba_t --compile --train-only --top 60 ;;
    grads)   step compiled_grads 300 python3 benchmarks/compiled_grads.py ${GRADS_ARGS:-} ;;
    compiled) step where_vmamba_compiled 200 python3 benchmarks/profile_model.py --model vmamba_t --compile --top 45
               step where_swin_compiled 170 python3 benchmarks/profile_model.py --model swin_t --compile --top 45
               step peers_compiled_train 220 python3 benchmarks/peers.py --compile --models vmamba_t,swin_t --modes train ;;
    map)     step map_tests 100 $GPU_PYTEST -rA tests/test_ss2d_map.py -k forward
               step ss2d_map 120 python3 benchmarks/ss2d_map.py --sweep --parts infer
               step peers_map 140 python3 benchmarks/peers.py --models vmamba_t,swin_t --modes plain,bench,graph \
                 --ss2d-map off,default,${MAP_VARIANTS:-gemm-input,gemm-input-steps} --name peers_map
               step peers_map_compiled 230 python3 benchmarks/peers.py --compile --models vmamba_t,swin_t --modes plain \
                 --ss2d-map off,default,${MAP_VARIANTS:-gemm-input,gemm-input-steps} --name peers_map_compiled ;;
    fusions) step fusion_tests 120 $GPU_PYTEST -rA tests/test_mlp_kernel.py \
                 tests/test_linear_gelu.py tests/test_dwconv_silu.py
               step fusions 90 python3 benchmarks/fusions.py --sweep
               step peers_fusions 150 python3 benchmarks/peers.py --models vmamba_t,swin_t --modes plain,bench \
                 --fusions default,none --name peers_fusions
               step peers_fusions_compiled 200 python3 benchmarks/peers.py --compile --models vmamba_t,swin_t \
                 --modes plain --fusions default,none --name peers_fusions_compiled ;;
    maptrain) step map_train_tests 120 $GPU_PYTEST -rA tests/test_ss2d_map.py \
                 -k training
               step ss2d_map_train 130 python3 benchmarks/ss2d_map.py --sweep --parts train
               step peers_map_train 120 python3 benchmarks/peers.py --models vmamba_t,swin_t --modes train \
                 --ss2d-map off,default,${MAP_TRAIN_VARIANTS:-dot-input:784,dot-input:3136} --name peers_map_train
               step peers_map_train_compiled 200 python3 benchmarks/peers.py --compile --models vmamba_t,swin_t \
                 --modes train --ss2d-map off,default --name peers_map_train_compiled ;;
    mapprev) step ss2d_map_prev 200 python3 benchmarks/ss2d_map.py --prev .prev --parts train ;;
    convncu) step conv_ncu 150 ncu --clock-control none --section SpeedOfLight --section MemoryWorkloadAnalysis \
               --section Occupancy --section LaunchStats --section WarpStateStats --section SchedulerStats \
               -k "regex:_dwconv_silu_kernel|conv2d_c1|silu" --launch-count 4 \
               python3 benchmarks/fusions.py --parts conv ;;
    quick)   step models_quick 200 python3 benchmarks/models.py --quick --sections infer,train ;;
    graph)   step models_graph 300 python3 benchmarks/models.py --quick --sections infer,train,graph ;;
    models)  step models ${MODELS_LIMIT:-420} python3 benchmarks/models.py --sections ${MODELS_SECTIONS:-infer,train,res} \
               ${MODELS_ARGS:-} ;;
    compile) step compile ${COMPILE_LIMIT:-540} python3 benchmarks/models.py --sections compile --name compile ${COMPILE_ARGS:-} ;;
    traingraph) step train_graph_tests 400 $GPU_PYTEST -s tests/test_cuda_graph_gpu.py
               step train_graph 400 python3 benchmarks/train_graph.py ${TRAIN_GRAPH_ARGS:-} ;;
    *) echo "unknown step $what"; exit 2 ;;
  esac
done
# The device tool returns a limited number of files: past 7, the logs and JSON go into one archive (the
# markdown tables stay readable as they are).
if [ "$(ls "$OUT" | wc -l)" -gt 7 ]; then
  (cd "$OUT" && tar czf logs.tgz $(ls *.log *.json 2>/dev/null) && rm -f -- *.log *.json)
fi
