// Block-mean downsampling of a C-contiguous 3-D volume (axis order z, y, x).
//
// Contract (identical to the NumPy twin cpu_fallback.kernels.downsample_mean):
//   * output shape per axis = floor(input / factor); the trailing remainder of
//     every axis is dropped, as BigDataViewer / N5 pyramids do;
//   * one thread per output voxel (grid-stride loop, so any grid size is valid);
//   * the block sum is accumulated in float32 in z, y, x order and divided by
//     the block volume in float32 (IEEE division);
//   * integer outputs are floor(mean + 0.5) (round half up), clamped to the
//     range of the type; float32 outputs are the float32 mean.
//
// The input depth is not passed: the caller guarantees oz * fz <= depth.
// All indices are 64-bit, so volumes above 2^31 voxels are addressed correctly.
// The kernel uses neither shared memory nor __syncthreads(): the CPU emulation
// used in CI (cpu_emulation.py) runs threads one after the other and supports
// neither. No #include: the file compiles unchanged with NVRTC, nvcc and g++.

__device__ __forceinline__ float round_half_up_clamped(float mean, float lo, float hi)
{
    return fminf(fmaxf(floorf(mean + 0.5f), lo), hi);
}

__device__ __forceinline__ void store_mean(unsigned char* dst, float mean)
{
    *dst = (unsigned char)round_half_up_clamped(mean, 0.0f, 255.0f);
}

__device__ __forceinline__ void store_mean(unsigned short* dst, float mean)
{
    *dst = (unsigned short)round_half_up_clamped(mean, 0.0f, 65535.0f);
}

__device__ __forceinline__ void store_mean(short* dst, float mean)
{
    *dst = (short)round_half_up_clamped(mean, -32768.0f, 32767.0f);
}

__device__ __forceinline__ void store_mean(float* dst, float mean)
{
    *dst = mean;
}

template <typename T>
__device__ __forceinline__ void downsample_mean_impl(
    const T* __restrict__ src, T* __restrict__ dst,
    long long ny, long long nx,
    long long oz, long long oy, long long ox,
    int fz, int fy, int fx)
{
    const long long n_out = oz * oy * ox;
    const float block_volume = (float)((long long)fz * fy * fx);
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n_out; i += stride) {
        const long long x = i % ox;
        const long long yz = i / ox;
        const long long y = yz % oy;
        const long long z = yz / oy;
        float sum = 0.0f;
        for (int dz = 0; dz < fz; ++dz) {
            const long long plane = (z * fz + dz) * ny;
            for (int dy = 0; dy < fy; ++dy) {
                const T* row = src + (plane + y * fy + dy) * nx + x * fx;
                for (int dx = 0; dx < fx; ++dx) {
                    sum += (float)row[dx];
                }
            }
        }
        store_mean(dst + i, sum / block_volume);
    }
}

#define RHAPSO_DOWNSAMPLE_MEAN(SUFFIX, T)                                          \
    extern "C" __global__ void downsample_mean_##SUFFIX(                           \
        const T* __restrict__ src, T* __restrict__ dst,                            \
        long long ny, long long nx,                                                \
        long long oz, long long oy, long long ox,                                  \
        int fz, int fy, int fx)                                                    \
    {                                                                              \
        downsample_mean_impl<T>(src, dst, ny, nx, oz, oy, ox, fz, fy, fx);         \
    }

RHAPSO_DOWNSAMPLE_MEAN(u8, unsigned char)
RHAPSO_DOWNSAMPLE_MEAN(u16, unsigned short)
RHAPSO_DOWNSAMPLE_MEAN(i16, short)
RHAPSO_DOWNSAMPLE_MEAN(f32, float)
