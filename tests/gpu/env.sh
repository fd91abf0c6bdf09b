# tests/gpu/env.sh BIN - sourced by run.sh (or by hand): points the
# loader at the CUDA plugin in BIN and at a cuBLAS 13 (the toolkit's, else
# the one PyTorch's wheels carry).
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib $(python3 -c 'import nvidia,os;print(" ".join(os.path.join(p,"cu13","lib") for p in nvidia.__path__))' 2>/dev/null); do
  [ -e "$d/libcublasLt.so.13" ] && export LD_LIBRARY_PATH=${LD_LIBRARY_PATH:+$LD_LIBRARY_PATH:}$d
done
export NAWAL_CUDA_PLUGIN=$1/libnawal_cuda.so
