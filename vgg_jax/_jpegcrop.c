/* Crop-aware JPEG decoding for vgg_jax.preprocess (optional C extension).
 *
 * decode_crop() decodes only a rectangle of a JPEG with libjpeg(-turbo)'s
 * partial decompression API (jpeg_skip_scanlines for the rows above it,
 * jpeg_crop_scanline for the columns, and no decoding at all of the rows
 * below it), optionally at a 1/2, 1/4 or 1/8 DCT-domain scale, and resamples
 * that rectangle bilinearly (OpenCV's INTER_LINEAR fixed-point arithmetic:
 * 11-bit weights, one rounding at the end) straight into the caller's
 * uint8 output, mirrored left-right if asked.  Rows and columns of the
 * rectangle's edges are decoded but, by the caller's choice of a one-pixel
 * margin, never sampled: libjpeg-turbo documents that "fancy" chroma
 * upsampling may treat a partial row's ends as image edges.
 *
 * Built by setuptools from pyproject.toml (optional: without a compiler or
 * libjpeg headers the package installs without it and preprocess.py uses
 * its full-decode path).  Needs libjpeg-turbo >= 1.5 (Debian:
 * libjpeg62-turbo-dev).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <math.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jpeglib.h>

#if (defined(__x86_64__) || defined(__i386__)) && !defined(JPEGCROP_NO_SIMD)
#define HAVE_X86_SIMD 1
#include <emmintrin.h>
#include <tmmintrin.h>
#endif

typedef struct {
  struct jpeg_error_mgr pub;
  jmp_buf jump;
  char message[JMSG_LENGTH_MAX];
} crop_error_mgr;

static void crop_error_exit(j_common_ptr cinfo) {
  crop_error_mgr *err = (crop_error_mgr *)cinfo->err;
  (*cinfo->err->format_message)(cinfo, err->message);
  longjmp(err->jump, 1);
}

/* Warnings (corrupt or truncated data, extraneous bytes...) are errors
 * here, like simplejpeg's strict mode: the caller then takes its full-decode
 * path, which decides what to do with such a file. */
static void crop_emit_message(j_common_ptr cinfo, int msg_level) {
  if (msg_level < 0) crop_error_exit(cinfo);
}

enum { RESULT_OK = 0, RESULT_ERROR = 1, RESULT_UNSUPPORTED = 2,
       RESULT_BAD_REGION = 3, RESULT_NO_MEMORY = 4 };

#define COEF_BITS 11
#define COEF_SCALE (1 << COEF_BITS)

/* OpenCV resize's (INTER_LINEAR) taps and weight for output pixel dst of a
 * resize by `scale` (source / destination size) of an image `size` pixels
 * wide, as indices into the decoded part [first, first + count). */
static void linear_tap(int dst, double scale, int size, int first, int count,
                       int *i0, int *i1, int *w1) {
  float f = (float)((dst + 0.5) * scale - 0.5);  /* as OpenCV: in float */
  int i = (int)floorf(f);
  float frac = f - (float)i;
  if (i < 0) { i = 0; frac = 0.f; }
  if (i >= size - 1) { i = size - 1; frac = 0.f; }
  int j = i + 1 < size ? i + 1 : size - 1;
  /* The caller decodes every pixel it samples; clamping is only a guard. */
  i -= first;
  j -= first;
  *i0 = i < 0 ? 0 : (i >= count ? count - 1 : i);
  *i1 = j < 0 ? 0 : (j >= count ? count - 1 : j);
  *w1 = (int)lrintf(frac * COEF_SCALE);
}


/* Resampling arithmetic.  Vertical weights have 7 bits (b0 + b1 = 128) so
 * that a vertically blended row fits int16 (<= 255 * 128); horizontal
 * weights have OpenCV's 11 bits; one rounding at the end.  Against
 * cv2.resize (whose SIMD code also rounds intermediates) this differs by
 * at most one grey level. */
#define VBITS 7
#define VSCALE (1 << VBITS)
#define SHIFT (COEF_BITS + VBITS)

/* One output pixel's horizontal tap: element offset of its left source
 * pixel in a blended row, and the weights a0 | a1 << 16 (a1 = weight of
 * the pixel 3 elements further on). */
typedef struct { int32_t offset; int32_t weights; } htap;

static void blend_rows(const unsigned char *restrict s0,
                       const unsigned char *restrict s1, int b1, size_t n,
                       int16_t *restrict v) {
  const int b0 = VSCALE - b1;
  size_t k = 0;
#ifdef HAVE_X86_SIMD
  const __m128i zero = _mm_setzero_si128();
  const __m128i w0 = _mm_set1_epi16((short)b0), w1 = _mm_set1_epi16((short)b1);
  for (; k + 16 <= n; k += 16) {
    __m128i a = _mm_loadu_si128((const __m128i *)(s0 + k));
    __m128i b = _mm_loadu_si128((const __m128i *)(s1 + k));
    __m128i lo = _mm_add_epi16(_mm_mullo_epi16(_mm_unpacklo_epi8(a, zero), w0),
                               _mm_mullo_epi16(_mm_unpacklo_epi8(b, zero), w1));
    __m128i hi = _mm_add_epi16(_mm_mullo_epi16(_mm_unpackhi_epi8(a, zero), w0),
                               _mm_mullo_epi16(_mm_unpackhi_epi8(b, zero), w1));
    _mm_storeu_si128((__m128i *)(v + k), lo);
    _mm_storeu_si128((__m128i *)(v + k + 8), hi);
  }
#endif
  for (; k < n; k++) v[k] = (int16_t)(s0[k] * b0 + s1[k] * b1);
}

static void sample_row_scalar(const int16_t *v, const htap *taps, int n,
                              unsigned char *o) {
  const int32_t half = 1 << (SHIFT - 1);
  for (int u = 0; u < n; u++) {
    const int16_t *p = v + taps[u].offset;
    const int32_t a0 = taps[u].weights & 0xffff, a1 = taps[u].weights >> 16;
    o[3 * u] = (unsigned char)((p[0] * a0 + p[3] * a1 + half) >> SHIFT);
    o[3 * u + 1] = (unsigned char)((p[1] * a0 + p[4] * a1 + half) >> SHIFT);
    o[3 * u + 2] = (unsigned char)((p[2] * a0 + p[5] * a1 + half) >> SHIFT);
  }
}

#ifdef HAVE_X86_SIMD
/* Four output pixels per step: pshufb pairs each channel with its right
 * neighbour, pmaddwd applies (a0, a1).  Needs SSSE3 (checked at run time). */
__attribute__((target("ssse3")))
static void sample_row_ssse3(const int16_t *v, const htap *taps, int n,
                             unsigned char *o) {
  const __m128i pair = _mm_setr_epi8(0, 1, 6, 7, 2, 3, 8, 9, 4, 5, 10, 11,
                                     -128, -128, -128, -128);
  const __m128i compact = _mm_setr_epi8(0, 1, 2, 4, 5, 6, 8, 9, 10, 12, 13,
                                        14, -128, -128, -128, -128);
  const __m128i half = _mm_set1_epi32(1 << (SHIFT - 1));
  int u = 0;
  for (; u + 4 <= n; u += 4) {
    __m128i r[4];
    for (int i = 0; i < 4; i++) {
      __m128i x = _mm_loadu_si128((const __m128i *)(v + taps[u + i].offset));
      x = _mm_madd_epi16(_mm_shuffle_epi8(x, pair),
                         _mm_set1_epi32(taps[u + i].weights));
      r[i] = _mm_srai_epi32(_mm_add_epi32(x, half), SHIFT);
    }
    __m128i bytes = _mm_packus_epi16(_mm_packs_epi32(r[0], r[1]),
                                     _mm_packs_epi32(r[2], r[3]));
    bytes = _mm_shuffle_epi8(bytes, compact);
    _mm_storel_epi64((__m128i *)(o + 3 * u), bytes);
    int32_t last = _mm_cvtsi128_si32(_mm_srli_si128(bytes, 8));
    memcpy(o + 3 * u + 8, &last, 4);
  }
  sample_row_scalar(v, taps + u, n - u, o + 3 * u);
}
#endif

/* The float32 form: out = value * a[c] + b[c] with the rounded value of
 * the uint8 form (so the same pixels, normalised), channels reversed first
 * if bgr (a, b are in output order). */
typedef struct { float a[4], b[4]; int bgr; } affine;

static void sample_row_f32_scalar(const int16_t *v, const htap *taps, int n,
                                  float *o, const affine *f) {
  const int32_t half = 1 << (SHIFT - 1);
  for (int u = 0; u < n; u++) {
    const int16_t *p = v + taps[u].offset;
    const int32_t a0 = taps[u].weights & 0xffff, a1 = taps[u].weights >> 16;
    for (int c = 0; c < 3; c++) {
      int src = f->bgr ? 2 - c : c;
      int32_t x = (p[src] * a0 + p[src + 3] * a1 + half) >> SHIFT;
      o[3 * u + c] = (float)x * f->a[c] + f->b[c];
    }
  }
}

#ifdef HAVE_X86_SIMD
__attribute__((target("ssse3")))
static void sample_row_f32_ssse3(const int16_t *v, const htap *taps, int n,
                                 float *o, const affine *f) {
  const __m128i pair = f->bgr
      ? _mm_setr_epi8(4, 5, 10, 11, 2, 3, 8, 9, 0, 1, 6, 7,
                      -128, -128, -128, -128)
      : _mm_setr_epi8(0, 1, 6, 7, 2, 3, 8, 9, 4, 5, 10, 11,
                      -128, -128, -128, -128);
  const __m128i half = _mm_set1_epi32(1 << (SHIFT - 1));
  const __m128 a = _mm_loadu_ps(f->a), b = _mm_loadu_ps(f->b);
  int u = 0;
  /* Each store writes 4 floats; the 4th is the next pixel's first, written
   * again by the next step.  So the row's last pixel is done in scalar. */
  for (; u + 1 < n; u++) {
    __m128i x = _mm_loadu_si128((const __m128i *)(v + taps[u].offset));
    x = _mm_madd_epi16(_mm_shuffle_epi8(x, pair),
                       _mm_set1_epi32(taps[u].weights));
    x = _mm_srai_epi32(_mm_add_epi32(x, half), SHIFT);
    _mm_storeu_ps(o + 3 * u, _mm_add_ps(_mm_mul_ps(_mm_cvtepi32_ps(x), a), b));
  }
  sample_row_f32_scalar(v, taps + u, n - u, o + 3 * u, f);
}
#endif

typedef struct {
  const unsigned char *data;
  size_t size;
  int denom, rx, ry, rw, rh;
  unsigned char *out;        /* uint8, or float32 if is_float */
  int out_h, out_w, is_float;
  affine norm;
  int x_start, y_start;
  double x_scale, y_scale;
  int flip, fast_dct, fast_upsample;
  int scaled_h, scaled_w;   /* output: the DCT-scaled image size */
  char message[JMSG_LENGTH_MAX];
} crop_job;

static int run_job(crop_job *job) {
  struct jpeg_decompress_struct cinfo;
  crop_error_mgr jerr;
  unsigned char *volatile region = NULL;
  JSAMPROW *volatile rows = NULL;
  int16_t *volatile vbuf = NULL;
  htap *volatile taps = NULL;
  volatile int created = 0;
  volatile int result = RESULT_ERROR;

  memset(&jerr, 0, sizeof(jerr));
  cinfo.err = jpeg_std_error(&jerr.pub);
  jerr.pub.error_exit = crop_error_exit;
  jerr.pub.emit_message = crop_emit_message;
  if (setjmp(jerr.jump)) {
    memcpy(job->message, jerr.message, sizeof(job->message));
    result = RESULT_ERROR;
    goto done;
  }
  jpeg_create_decompress(&cinfo);
  created = 1;
  jpeg_mem_src(&cinfo, job->data, (unsigned long)job->size);
  jpeg_read_header(&cinfo, TRUE);
  if (cinfo.jpeg_color_space != JCS_YCbCr &&
      cinfo.jpeg_color_space != JCS_GRAYSCALE &&
      cinfo.jpeg_color_space != JCS_RGB) {
    result = RESULT_UNSUPPORTED;  /* CMYK / YCCK: the caller uses Pillow */
    goto done;
  }
  cinfo.out_color_space = JCS_RGB;
  cinfo.scale_num = 1;
  cinfo.scale_denom = (unsigned int)job->denom;
  if (job->fast_dct) cinfo.dct_method = JDCT_IFAST;
  if (job->fast_upsample) cinfo.do_fancy_upsampling = FALSE;
  jpeg_calc_output_dimensions(&cinfo);
  job->scaled_h = (int)cinfo.output_height;
  job->scaled_w = (int)cinfo.output_width;
  if (job->rx < 0 || job->ry < 0 || job->rw <= 0 || job->rh <= 0 ||
      job->rx + job->rw > job->scaled_w || job->ry + job->rh > job->scaled_h) {
    result = RESULT_BAD_REGION;
    goto done;
  }
  jpeg_start_decompress(&cinfo);
  if (cinfo.output_components != 3) {
    result = RESULT_UNSUPPORTED;
    goto done;
  }
  JDIMENSION x0 = (JDIMENSION)job->rx, width = (JDIMENSION)job->rw;
  if (width < cinfo.output_width) jpeg_crop_scanline(&cinfo, &x0, &width);
  const int rw = (int)width, rh = job->rh;
  const size_t stride = (size_t)rw * 3;
  region = (unsigned char *)malloc(stride * (size_t)rh);
  rows = (JSAMPROW *)malloc(sizeof(JSAMPROW) * (size_t)rh);
  /* + 16: the SIMD sampler loads 8 values from a pixel's offset. */
  vbuf = (int16_t *)calloc(stride + 16, sizeof(int16_t));
  taps = (htap *)malloc(sizeof(htap) * (size_t)job->out_w);
  if (!region || !rows || !vbuf || !taps) {
    result = RESULT_NO_MEMORY;
    goto done;
  }
  for (int r = 0; r < rh; r++) rows[r] = region + (size_t)r * stride;
  if (job->ry > 0) jpeg_skip_scanlines(&cinfo, (JDIMENSION)job->ry);
  while (cinfo.output_scanline < (JDIMENSION)(job->ry + rh)) {
    JDIMENSION done_rows = cinfo.output_scanline - (JDIMENSION)job->ry;
    if (jpeg_read_scanlines(&cinfo, rows + done_rows,
                            (JDIMENSION)rh - done_rows) == 0) {
      strcpy(job->message, "no scanline returned");
      result = RESULT_ERROR;
      goto done;
    }
  }
  /* The rows below the rectangle are never decoded. */
  jpeg_abort_decompress(&cinfo);

  /* Horizontal taps and weights of the output columns. */
  for (int u = 0; u < job->out_w; u++) {
    int uu = job->flip ? job->out_w - 1 - u : u;
    int i0, i1, w1;
    linear_tap(job->x_start + uu, job->x_scale, job->scaled_w, (int)x0, rw,
               &i0, &i1, &w1);
    if (i1 != i0 + 1) w1 = 0;  /* an image edge: one pixel, weight 1 */
    taps[u].offset = 3 * i0;
    taps[u].weights = (COEF_SCALE - w1) | (w1 << 16);
  }
  void (*sample_row)(const int16_t *, const htap *, int, unsigned char *) =
      sample_row_scalar;
  void (*sample_row_f32)(const int16_t *, const htap *, int, float *,
                         const affine *) = sample_row_f32_scalar;
#ifdef HAVE_X86_SIMD
  if (__builtin_cpu_supports("ssse3")) {
    sample_row = sample_row_ssse3;
    sample_row_f32 = sample_row_f32_ssse3;
  }
#endif
  for (int v = 0; v < job->out_h; v++) {
    int j0, j1, b1;
    linear_tap(job->y_start + v, job->y_scale, job->scaled_h, job->ry, rh,
               &j0, &j1, &b1);
    blend_rows(rows[j0], rows[j1], (b1 + (1 << (COEF_BITS - VBITS - 1))) >>
                                       (COEF_BITS - VBITS), stride, vbuf);
    size_t first = (size_t)v * job->out_w * 3;
    if (job->is_float)
      sample_row_f32(vbuf, taps, job->out_w, (float *)job->out + first,
                     &job->norm);
    else
      sample_row(vbuf, taps, job->out_w, job->out + first);
  }
  result = RESULT_OK;
done:
  if (created) jpeg_destroy_decompress(&cinfo);
  free(region);
  free((void *)rows);
  free(vbuf);
  free(taps);
  return result;
}

static PyObject *decode_crop(PyObject *self, PyObject *args, PyObject *kw) {
  static char *names[] = {"data", "denom", "region", "out", "x_start",
                          "x_scale", "y_start", "y_scale", "flip", "fast_dct",
                          "fast_upsample", "scale", "offset", "bgr", NULL};
  Py_buffer data, out;
  PyObject *out_obj;
  crop_job job;
  float *na = job.norm.a, *nb = job.norm.b;
  memset(&job, 0, sizeof(job));
  na[0] = na[1] = na[2] = 1.f;
  if (!PyArg_ParseTupleAndKeywords(
          args, kw, "y*i(iiii)Oidid|ppp(fff)(fff)p", names, &data, &job.denom,
          &job.rx, &job.ry, &job.rw, &job.rh, &out_obj, &job.x_start,
          &job.x_scale, &job.y_start, &job.y_scale, &job.flip, &job.fast_dct,
          &job.fast_upsample, na, na + 1, na + 2, nb, nb + 1, nb + 2,
          &job.norm.bgr))
    return NULL;
  if (PyObject_GetBuffer(out_obj, &out,
                         PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS | PyBUF_FORMAT)) {
    PyBuffer_Release(&data);
    return NULL;
  }
  const char *fmt = out.format ? out.format : "B";
  job.is_float = strcmp(fmt, "f") == 0 && out.itemsize == 4;
  if (out.ndim != 3 || out.shape[2] != 3 ||
      !(job.is_float || (strcmp(fmt, "B") == 0 && out.itemsize == 1)) ||
      (job.denom != 1 && job.denom != 2 && job.denom != 4 && job.denom != 8)) {
    PyBuffer_Release(&data);
    PyBuffer_Release(&out);
    PyErr_SetString(PyExc_TypeError,
                    "out must be a C-contiguous uint8 or float32 (H, W, 3) "
                    "array and "
                    "denom 1, 2, 4 or 8");
    return NULL;
  }
  job.data = (const unsigned char *)data.buf;
  job.size = (size_t)data.len;
  job.out = (unsigned char *)out.buf;
  job.out_h = (int)out.shape[0];
  job.out_w = (int)out.shape[1];
  int result;
  Py_BEGIN_ALLOW_THREADS
  result = run_job(&job);
  Py_END_ALLOW_THREADS
  PyBuffer_Release(&data);
  PyBuffer_Release(&out);
  switch (result) {
    case RESULT_OK:
      Py_RETURN_TRUE;
    case RESULT_UNSUPPORTED:
    case RESULT_ERROR:
      Py_RETURN_FALSE;
    case RESULT_BAD_REGION:
      PyErr_Format(PyExc_ValueError,
                   "region (%d, %d, %d, %d) is not inside the %dx%d image",
                   job.rx, job.ry, job.rw, job.rh, job.scaled_h, job.scaled_w);
      return NULL;
    case RESULT_NO_MEMORY:
      return PyErr_NoMemory();
    default:
      PyErr_SetString(PyExc_SystemError, "_jpegcrop: unexpected result");
      return NULL;
  }
}

static PyMethodDef methods[] = {
    {"decode_crop", (PyCFunction)(void (*)(void))decode_crop,
     METH_VARARGS | METH_KEYWORDS,
     "decode_crop(data, denom, (x, y, w, h), out, x_start, x_scale, y_start, "
     "y_scale, flip=False, fast_dct=False, fast_upsample=False, "
     "scale=(1, 1, 1), offset=(0, 0, 0), bgr=False) -> bool\n\n"
     "Decodes the rectangle (x, y, w, h) of the JPEG scaled by 1/denom and "
     "fills out[v, u] with pixel (y_start + v, x_start + u') of "
     "cv2.resize(scaled image, interpolation=INTER_LINEAR) by x_scale, "
     "y_scale (source / destination size), u' = W-1-u if flip else u.  "
     "A float32 out gets that uint8 value times scale plus offset (per "
     "output channel; channels reversed first if bgr).  "
     "The rectangle must hold every pixel sampled, plus one on each side "
     "that is not an image edge.  False: a colour space the decoder does "
     "not turn into RGB "
     "(CMYK, YCCK) or corrupt data (libjpeg warnings included): decode it "
     "some other way.  ValueError: a rectangle outside the image."},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_jpegcrop",
    "Crop-aware JPEG decoding (libjpeg-turbo).", -1, methods,
    NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__jpegcrop(void) {
  PyObject *m = PyModule_Create(&module);
  if (m) PyModule_AddIntConstant(m, "LIBJPEG_TURBO_VERSION_NUMBER",
#ifdef LIBJPEG_TURBO_VERSION_NUMBER
                                 LIBJPEG_TURBO_VERSION_NUMBER
#else
                                 0
#endif
  );
  return m;
}
