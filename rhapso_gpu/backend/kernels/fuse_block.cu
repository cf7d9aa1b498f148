// Affine fusion of one output block from the views that overlap it.
//
// Contract (identical to the CPU twin cpu_fallback.fusion.fuse_block, whose
// module docstring states it in full):
//   * one thread per output voxel (grid-stride loop, any grid size is valid);
//     the voxel's block-local index (x, y, z) is mapped into every view with
//     that view's 3x4 affine, p_d = ((a0*x + a1*y) + a2*z) + a3 in float32;
//   * a view covers the voxel when lo_d <= p_d <= hi_d on every axis; its
//     weight is (wx * wy) * wz, w_d = fn(t) with t = min(p_d - lo_d, hi_d - p_d)
//     / blend_d inside the ramp, 1 beyond it; fn(t) = (cos((1 - t) * pi) + 1) / 2
//     read from BigStitcher's 31-entry table with linear interpolation
//     (fuse_blend_lut below; the twin holds the same float32 values);
//   * values are trilinear with border extension (positions clamped to the region);
//   * fusion codes: 0 avg, 1 avg-blend, 2 max, 3 lowest-view-wins,
//     4 highest-view-wins, 5 closest-pixel-wins; 0 where no view covers.
//
// Inputs: all view regions concatenated in one float32 buffer; per view
// layout[4*v .. 4*v+3] = (offset into data, nx, ny, nz) and geometry[21*v ..]
// = (3x4 affine row-major, lo xyz, hi xyz, blend xyz). No coordinate grid is
// ever stored. nvcc may contract the position sums into FMAs, so on a GPU a
// position can differ from the twin's in its last bit. No shared memory,
// __syncthreads() or atomics (the CPU emulation used in CI runs threads one
// after another); no #include, so the file compiles unchanged with NVRTC, nvcc
// and g++.

#define RHAPSO_FUSE_GEOMETRY 21
#define RHAPSO_BLEND_LUT_STEPS 30

// fn(i / 30) for i = 0..30, rounded to float32.
__device__ const float fuse_blend_lut[RHAPSO_BLEND_LUT_STEPS + 1] = {
    0.0f, 0.00273905229f, 0.0109262001f, 0.0244717412f, 0.0432272702f, 0.0669872984f, 0.0954915062f,
    0.12842758f, 0.165434703f, 0.206107378f, 0.25f, 0.296631664f, 0.345491499f, 0.396044165f,
    0.447735757f, 0.5f, 0.552264214f, 0.603955865f, 0.654508471f, 0.703368306f, 0.75f,
    0.793892622f, 0.834565282f, 0.871572435f, 0.904508471f, 0.933012724f, 0.956772745f,
    0.97552824f, 0.989073813f, 0.997260928f, 1.0f};

__device__ __forceinline__ float fuse_blend_fn(float t)
{
    const float u = t * (float)RHAPSO_BLEND_LUT_STEPS;
    int k = (int)floorf(u);
    k = k < 0 ? 0 : (k > RHAPSO_BLEND_LUT_STEPS - 1 ? RHAPSO_BLEND_LUT_STEPS - 1 : k);
    const float lo = fuse_blend_lut[k];
    return lo + (u - (float)k) * (fuse_blend_lut[k + 1] - lo);
}

__device__ __forceinline__ float fuse_axis_weight(float p, float lo, float hi, float blend, bool* inside)
{
    if (!(p >= lo && p <= hi)) {
        *inside = false;
        return 0.0f;
    }
    if (blend > 0.0f) {
        const float d = fminf(p - lo, hi - p);
        if (d >= blend) {
            return 1.0f;
        }
        return fuse_blend_fn(fminf(fmaxf(d / blend, 0.0f), 1.0f));
    }
    return 1.0f;
}

__device__ __forceinline__ float fuse_trilinear(const float* __restrict__ img, long long nx, long long ny, long long nz,
                                                float x, float y, float z)
{
    x = fminf(fmaxf(x, 0.0f), (float)(nx - 1));
    y = fminf(fmaxf(y, 0.0f), (float)(ny - 1));
    z = fminf(fmaxf(z, 0.0f), (float)(nz - 1));
    const long long x0 = (long long)x, y0 = (long long)y, z0 = (long long)z;  // truncation = floor: x, y, z >= 0
    const long long x1 = x0 + 1 < nx ? x0 + 1 : x0;
    const long long y1 = y0 + 1 < ny ? y0 + 1 : y0;
    const long long z1 = z0 + 1 < nz ? z0 + 1 : z0;
    const float fx = x - (float)x0, fy = y - (float)y0, fz = z - (float)z0;
    const float* p00 = img + (z0 * ny + y0) * nx;
    const float* p01 = img + (z0 * ny + y1) * nx;
    const float* p10 = img + (z1 * ny + y0) * nx;
    const float* p11 = img + (z1 * ny + y1) * nx;
    const float c00 = p00[x0] + fx * (p00[x1] - p00[x0]);
    const float c01 = p01[x0] + fx * (p01[x1] - p01[x0]);
    const float c10 = p10[x0] + fx * (p10[x1] - p10[x0]);
    const float c11 = p11[x0] + fx * (p11[x1] - p11[x0]);
    const float c0 = c00 + fy * (c01 - c00);
    const float c1 = c10 + fy * (c11 - c10);
    return c0 + fz * (c1 - c0);
}

extern "C" __global__ void fuse_block_f32(
    const float* __restrict__ data, const long long* __restrict__ layout, const float* __restrict__ geometry,
    float* __restrict__ out, int n_views, int fusion,
    long long oz, long long oy, long long ox)
{
    const long long n_out = oz * oy * ox;
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n_out; i += stride) {
        const float x = (float)(i % ox);
        const float y = (float)((i / ox) % oy);
        const float z = (float)(i / (ox * oy));
        float acc = 0.0f, norm = 0.0f, best_w = 0.0f;
        bool taken = false;
        for (int k = 0; k < n_views; ++k) {
            const int v = fusion == 4 ? n_views - 1 - k : k;  // highest-view-wins walks the views backwards
            const float* g = geometry + (long long)RHAPSO_FUSE_GEOMETRY * v;
            bool inside = true;
            const float px = ((g[0] * x + g[1] * y) + g[2] * z) + g[3];
            const float wx = fuse_axis_weight(px, g[12], g[15], g[18], &inside);
            if (!inside) {
                continue;
            }
            const float py = ((g[4] * x + g[5] * y) + g[6] * z) + g[7];
            const float wy = fuse_axis_weight(py, g[13], g[16], g[19], &inside);
            if (!inside) {
                continue;
            }
            const float pz = ((g[8] * x + g[9] * y) + g[10] * z) + g[11];
            const float wz = fuse_axis_weight(pz, g[14], g[17], g[20], &inside);
            if (!inside) {
                continue;
            }
            const float w = (wx * wy) * wz;
            if (fusion == 5 && !(w > best_w)) {
                continue;
            }
            const long long* l = layout + 4 * (long long)v;
            const float value = fuse_trilinear(data + l[0], l[1], l[2], l[3], px, py, pz);
            if (fusion == 0) {
                acc += value;
                norm += 1.0f;
            } else if (fusion == 1) {
                acc += w * value;
                norm += w;
            } else if (fusion == 2) {
                acc = taken ? fmaxf(acc, value) : value;
                taken = true;
            } else if (fusion == 5) {
                acc = value;
                best_w = w;
            } else {  // 3, 4: the first covering view in walking order wins
                acc = value;
                break;
            }
        }
        if (fusion <= 1) {
            acc = norm > 0.0f ? acc / norm : 0.0f;
        }
        out[i] = acc;
    }
}
