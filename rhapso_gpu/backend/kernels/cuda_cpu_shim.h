// Minimal CUDA-to-C++ shim for running rhapso-gpu kernels on the CPU.
//
// Force-included (g++ -include) in front of a .cu file by cpu_emulation.py, so
// the same kernel source compiles as plain C++. The generated launcher sets
// gridDim/blockDim, then loops over every block and thread, setting
// blockIdx/threadIdx before each call of the kernel function.
//
// Deliberately NOT provided: __shared__, __syncthreads(), atomics, warp
// intrinsics. Threads run one after another, so barriers and block-shared
// memory cannot be honoured; a kernel that uses them fails to compile here
// instead of silently computing something else.
#pragma once

#include <math.h>
#include <type_traits>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline

struct dim3 {
    unsigned int x, y, z;
    dim3(unsigned int x_ = 1, unsigned int y_ = 1, unsigned int z_ = 1) : x(x_), y(y_), z(z_) {}
};

// thread_local: two Python threads may run emulated launches at the same time.
static thread_local dim3 gridDim;
static thread_local dim3 blockDim;
static thread_local dim3 blockIdx;
static thread_local dim3 threadIdx;
