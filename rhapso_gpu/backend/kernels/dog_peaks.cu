// DoG extrema test and quadratic sub-pixel localisation, fused: one thread per candidate voxel.
//
// Contract (identical to the NumPy twin cpu_fallback.dog_peaks.dog_peaks):
//   * dog is a C-contiguous float32 volume (axis order z, y, x) of shape (nz, ny, nx);
//     candidates holds flat C-order indices into it (any voxels; usually those with
//     |dog| >= threshold / 3 inside the caller's block core);
//   * a candidate is a DoG minimum (an image MAXIMUM, kind +1) when find_max is set,
//     dog <= -threshold/3 and no 26-neighbour is smaller (non-strict, BigStitcher's
//     LocalExtrema.MinimumCheck); it is a DoG maximum (an image MINIMUM, kind -1) when
//     find_min is set, dog >= threshold/3 and no 26-neighbour is larger;
//   * base positions (the candidate and every later one) must lie in the inclusive box
//     [lo, hi] (z, y, x); the caller passes the image shrunk by one voxel (and never
//     more than the array shrunk by one voxel, so every access is in bounds);
//   * localisation (imglib2 SubpixelLocalization, as used by multiview-reconstruction):
//     at the base, gradient g_d = (a+ - a-) / 2, Hessian H_dd = a+ - 2 a0 + a-,
//     H_de = (a++ - a-+ - a+- + a--) / 4 (double precision, z, y, x order);
//     offset = -H^-1 g by the adjugate (offset 0 when det H == 0); when some
//     |offset_d| > 0.5 + moves * move_tolerance the base moves by one voxel along each
//     such axis and the fit repeats; at most max_moves moves (max_moves + 1 fits); a base
//     leaving [lo, hi] or no convergence rejects the peak;
//   * refined value = dog(base) + 0.5 g . offset; kept when |value| > threshold;
//   * outputs per candidate: kind (+1, -1, or 0 = rejected), position_zyx
//     ((base + origin) + offset: array voxel coordinates shifted by the integer origin, so
//     blocks of one image give identical bits; 0 when rejected) and value (0 when rejected).
//
// No shared memory, __syncthreads() or atomics (the CPU emulation in CI runs threads one
// after another). No #include: compiles unchanged with NVRTC, nvcc and g++.

__device__ __forceinline__ double dog_at(const float* dog, long long ny, long long nx,
                                         long long z, long long y, long long x)
{
    return (double)dog[(z * ny + y) * nx + x];
}

__device__ __forceinline__ bool inside(long long z, long long y, long long x,
                                       long long lo_z, long long lo_y, long long lo_x,
                                       long long hi_z, long long hi_y, long long hi_x)
{
    return z >= lo_z && z <= hi_z && y >= lo_y && y <= hi_y && x >= lo_x && x <= hi_x;
}

// Sign of the extremum at (z, y, x): +1 DoG minimum (image max), -1 DoG maximum (image min), 0 none.
__device__ __forceinline__ int extremum_kind(const float* dog, long long ny, long long nx,
                                             long long z, long long y, long long x,
                                             double threshold, int find_max, int find_min)
{
    const float c = dog[(z * ny + y) * nx + x];
    const double third = threshold / 3.0;
    bool is_min = find_max != 0 && (double)c <= -third;
    bool is_max = find_min != 0 && (double)c >= third;
    for (int dz = -1; dz <= 1; ++dz) {
        for (int dy = -1; dy <= 1; ++dy) {
            for (int dx = -1; dx <= 1; ++dx) {
                const float v = dog[((z + dz) * ny + (y + dy)) * nx + (x + dx)];
                is_min = is_min && !(v < c);
                is_max = is_max && !(v > c);
            }
        }
    }
    return is_min ? 1 : (is_max ? -1 : 0);
}

extern "C" __global__ void dog_peaks_f32(
    const float* __restrict__ dog, const long long* __restrict__ candidates, long long n_candidates,
    long long nz, long long ny, long long nx,
    long long lo_z, long long lo_y, long long lo_x,
    long long hi_z, long long hi_y, long long hi_x,
    long long origin_z, long long origin_y, long long origin_x,
    double threshold, int find_max, int find_min, int max_moves, double move_tolerance,
    signed char* __restrict__ kind, double* __restrict__ position_zyx, double* __restrict__ value)
{
    (void)nz;
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n_candidates; i += stride) {
        const long long index = candidates[i];
        long long x = index % nx;
        long long y = (index / nx) % ny;
        long long z = index / (nx * ny);
        kind[i] = 0;
        position_zyx[3 * i] = 0.0;
        position_zyx[3 * i + 1] = 0.0;
        position_zyx[3 * i + 2] = 0.0;
        value[i] = 0.0;
        if (!inside(z, y, x, lo_z, lo_y, lo_x, hi_z, hi_y, hi_x)) continue;
        const int sign = extremum_kind(dog, ny, nx, z, y, x, threshold, find_max, find_min);
        if (sign == 0) continue;

        for (int moves = 0; moves <= max_moves; ++moves) {
            if (!inside(z, y, x, lo_z, lo_y, lo_x, hi_z, hi_y, hi_x)) break;
            const double a0 = dog_at(dog, ny, nx, z, y, x);
            const double zp = dog_at(dog, ny, nx, z + 1, y, x), zm = dog_at(dog, ny, nx, z - 1, y, x);
            const double yp = dog_at(dog, ny, nx, z, y + 1, x), ym = dog_at(dog, ny, nx, z, y - 1, x);
            const double xp = dog_at(dog, ny, nx, z, y, x + 1), xm = dog_at(dog, ny, nx, z, y, x - 1);
            const double gz = (zp - zm) * 0.5, gy = (yp - ym) * 0.5, gx = (xp - xm) * 0.5;
            const double hzz = (zp - 2.0 * a0) + zm;
            const double hyy = (yp - 2.0 * a0) + ym;
            const double hxx = (xp - 2.0 * a0) + xm;
            const double hzy = (((dog_at(dog, ny, nx, z + 1, y + 1, x) - dog_at(dog, ny, nx, z - 1, y + 1, x))
                                 - dog_at(dog, ny, nx, z + 1, y - 1, x)) + dog_at(dog, ny, nx, z - 1, y - 1, x)) * 0.25;
            const double hzx = (((dog_at(dog, ny, nx, z + 1, y, x + 1) - dog_at(dog, ny, nx, z - 1, y, x + 1))
                                 - dog_at(dog, ny, nx, z + 1, y, x - 1)) + dog_at(dog, ny, nx, z - 1, y, x - 1)) * 0.25;
            const double hyx = (((dog_at(dog, ny, nx, z, y + 1, x + 1) - dog_at(dog, ny, nx, z, y - 1, x + 1))
                                 - dog_at(dog, ny, nx, z, y + 1, x - 1)) + dog_at(dog, ny, nx, z, y - 1, x - 1)) * 0.25;
            // adjugate of the symmetric Hessian [[hzz, hzy, hzx], [hzy, hyy, hyx], [hzx, hyx, hxx]]
            const double c00 = hyy * hxx - hyx * hyx;
            const double c01 = hzx * hyx - hzy * hxx;
            const double c02 = hzy * hyx - hzx * hyy;
            const double c11 = hzz * hxx - hzx * hzx;
            const double c12 = hzy * hzx - hzz * hyx;
            const double c22 = hzz * hyy - hzy * hzy;
            const double det = (hzz * c00 + hzy * c01) + hzx * c02;
            double oz = 0.0, oy = 0.0, ox = 0.0;
            if (det != 0.0) {
                oz = -((c00 * gz + c01 * gy) + c02 * gx) / det;
                oy = -((c01 * gz + c11 * gy) + c12 * gx) / det;
                ox = -((c02 * gz + c12 * gy) + c22 * gx) / det;
            }
            const double tolerance = 0.5 + moves * move_tolerance;
            bool moved = false;
            if (fabs(oz) > tolerance) { z += oz > 0.0 ? 1 : -1; moved = true; }
            if (fabs(oy) > tolerance) { y += oy > 0.0 ? 1 : -1; moved = true; }
            if (fabs(ox) > tolerance) { x += ox > 0.0 ? 1 : -1; moved = true; }
            if (moved) continue;
            const double refined = a0 + 0.5 * ((gz * oz + gy * oy) + gx * ox);
            if (fabs(refined) > threshold) {
                kind[i] = (signed char)sign;
                position_zyx[3 * i] = (double)(z + origin_z) + oz;
                position_zyx[3 * i + 1] = (double)(y + origin_y) + oy;
                position_zyx[3 * i + 2] = (double)(x + origin_x) + ox;
                value[i] = refined;
            }
            break;
        }
    }
}
