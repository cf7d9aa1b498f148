"""Public entry points of the fused kernels, dispatching on the array type."""

from __future__ import annotations

from rhapso_gpu.backend._select import Backend, backend_for_array, get_backend


def _backend(backend: Backend | str | None, array) -> Backend:
    if backend is None:
        return backend_for_array(array)
    if isinstance(backend, str):
        return get_backend(backend)
    return backend


def downsample_mean(volume_zyx, factors_zyx, backend: Backend | str | None = None):
    """Block-mean downsampling of a 3-D volume, for multiscale pyramids.

    Parameters
    ----------
    volume_zyx : array
        NumPy or CuPy volume, axis order ``(z, y, x)``, voxel type uint8,
        uint16, int16 or float32.
    factors_zyx : sequence of int
        Integer factors ``(fz, fy, fx)`` in voxels (axis order z, y, x), each
        between 1 and the volume size on its axis.
    backend : Backend or str, optional
        Where to compute; default: the backend that owns ``volume_zyx``
        (:func:`backend_for_array`). A host volume given to the CuPy backend is
        copied to the device first.

    Returns
    -------
    array
        On the backend's device, shape ``(nz // fz, ny // fy, nx // fx)`` (the
        trailing remainder is dropped, as BigDataViewer / N5 pyramids do), same
        voxel type. The mean is accumulated in float32; integers are rounded half
        up. See :func:`cpu_fallback.kernels.downsample_mean`.

    Raises
    ------
    UserError
        On a volume that is not 3-D, an unsupported voxel type or a bad factor.
    """
    chosen = _backend(backend, volume_zyx)
    return chosen.kernel("downsample_mean")(chosen.asarray(volume_zyx), factors_zyx)
