/*
 * qwen.h — the C ABI of qwen-rt (Qwen-7B / Qwen-7B-Chat, Qwen v1), implemented in src/ffi.rs.
 * Link against libqwen_rt.so (or libqwen_rt.a plus -lpthread -ldl -lm); see README "Embedding from C".
 * tests/c_abi.rs checks with bindgen that every declaration here matches the Rust exports.
 *
 * CONVENTIONS
 * - Every function returns a qwen_status, except qwen_version, qwen_last_error, qwen_status_name and
 *   qwen_model_options_default, which cannot fail.
 * - On failure the return value says what kind of error it was and qwen_last_error() says what exactly.
 *   Out-pointers are set to NULL / 0 at entry (a qwen_finish to QWEN_FINISH_STOP), before any argument
 *   is checked, so they are never left dangling on failure.
 * - A malformed model file (config.json that is not UTF-8 text or not valid JSON, a bad safetensors
 *   header) is QWEN_ERR_MODEL; QWEN_ERR_IO is a file that could not be opened or read.
 * - Strings passed in are NUL-terminated UTF-8 (QWEN_ERR_INVALID_UTF8 otherwise) and are only read
 *   during the call; the library keeps its own copies.
 * - NULL where a pointer is required gives QWEN_ERR_NULL_ARG. A freed or foreign handle or buffer is
 *   detected (a registry of live objects is consulted before any dereference) and gives
 *   QWEN_ERR_INVALID_HANDLE, so a double free is an error code, not a crash.
 * - No Rust panic crosses the boundary: an internal bug gives QWEN_ERR_PANIC.
 *
 * LIMITS (each gives a clear qwen_last_error() naming the argument)
 * - A string argument is at most QWEN_MAX_INPUT_BYTES bytes (QWEN_ERR_INVALID_ARG); an id array at
 *   most QWEN_MAX_INPUT_TOKENS ids (QWEN_ERR_INVALID_ARG); a prompt longer than the KV cache
 *   (qwen_model_options.max_seq_len) is QWEN_ERR_CONTEXT_FULL.
 * - options.threads at most 1024; options.max_new_tokens 1 to 1048576; options.max_window_size >= 1.
 * - A model has at most QWEN_MAX_SESSIONS_PER_MODEL live sessions (each holds a whole KV cache); one
 *   more is QWEN_ERR_BUSY until one is freed.
 *
 * OWNERSHIP
 * - qwen_model*    from qwen_model_load       -> free with qwen_model_free.
 * - qwen_session*  from qwen_session_create   -> free with qwen_session_free.
 * - uint32_t* ids  from qwen_tokenize         -> free with qwen_free_tokens(ids, n) (the same n).
 * - char* text     from qwen_detokenize, qwen_session_send, qwen_session_generate,
 *                  qwen_session_generate_tokens -> free with qwen_free_string.
 * - const char* from qwen_version, qwen_status_name, qwen_model_backend: static, never freed.
 * - const char* from qwen_last_error: owned by the library, valid until the next qwen_* call on the
 *   same thread.
 * - Never free any of these with free(); every free function accepts NULL (and then does nothing).
 *
 * THREADS
 * - A qwen_model may be used from any number of threads at once (tokenize, detokenize, create
 *   sessions), and sessions created from one model may run on different threads at the same time.
 * - A qwen_session is used by one thread at a time. A second call on a session while one is running
 *   (another thread, or from inside its own stream callback) returns QWEN_ERR_BUSY; it never races.
 * - qwen_model_free may be called while sessions created from the model still exist: each session
 *   keeps the model alive until the session itself is freed. A handle freed on one thread while
 *   another thread is inside a call with it stays valid until that call returns.
 * - qwen_last_error() is per thread.
 */
#ifndef QWEN_H
#define QWEN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Pass as the model path to qwen_model_load to use the built-in tiny random-weight model (generated
 * once and cached in the temp directory; its output is random text). For tests and demos. */
#define QWEN_TINY_MODEL ":tiny:"

/* The limits of the LIMITS section above. */
#define QWEN_MAX_SESSIONS_PER_MODEL 64
#define QWEN_MAX_INPUT_BYTES 16777216
#define QWEN_MAX_INPUT_TOKENS 4194304

/* Result of every call that can fail. */
typedef enum qwen_status {
    QWEN_OK = 0,
    QWEN_ERR_NULL_ARG = 1,       /* a required pointer argument is NULL */
    QWEN_ERR_INVALID_UTF8 = 2,   /* a string argument is not valid UTF-8 */
    QWEN_ERR_INVALID_HANDLE = 3, /* a handle/buffer that is freed, foreign, or of the wrong kind */
    QWEN_ERR_INVALID_ARG = 4,    /* a value is out of range (option, sampling parameter, token id, ...) */
    QWEN_ERR_CONTEXT_FULL = 5,   /* the prompt does not fit in the context (max_seq_len) */
    QWEN_ERR_IO = 6,             /* a file could not be read */
    QWEN_ERR_MODEL = 7,          /* a model file is malformed (config, safetensors, tensor shapes) */
    QWEN_ERR_BACKEND = 8,        /* the requested backend is unavailable (no GPU, no driver, ...) */
    QWEN_ERR_BUSY = 9,           /* the session is in use by another call */
    QWEN_ERR_PANIC = 10          /* internal error (a bug); a session that hit it can only be freed */
} qwen_status;

/* Values for qwen_model_options.backend. */
typedef enum qwen_backend {
    QWEN_BACKEND_AUTO = 0, /* CUDA when usable, else CPU (with a note on stderr) */
    QWEN_BACKEND_CPU = 1,
    QWEN_BACKEND_CUDA = 2
} qwen_backend;

/* Values for qwen_model_options.dtype (the compute precision). */
typedef enum qwen_dtype {
    QWEN_DTYPE_AUTO = 0, /* f32 on the CPU, bf16 on CUDA */
    QWEN_DTYPE_F32 = 1,
    QWEN_DTYPE_BF16 = 2, /* CUDA only */
    QWEN_DTYPE_F16 = 3   /* CUDA only */
} qwen_dtype;

/* Values for qwen_model_options.quant: quantize the linear weights of a float (bf16 / f16 / f32)
 * checkpoint at load, exactly as transformers + bitsandbytes do (attn.c_attn, attn.c_proj, mlp.w1,
 * mlp.w2, mlp.c_proj; wte, lm_head, norms and biases stay float). The CPU backend only for now:
 * with QWEN_BACKEND_CUDA a quant other than NONE is QWEN_ERR_INVALID_ARG; with QWEN_BACKEND_AUTO the
 * model runs on the CPU (a note on stderr). A checkpoint that is already quantized (bitsandbytes 4/8-bit
 * as transformers saves it, e.g. written by `qwen-run quantize`, or AutoGPTQ) is used as stored with
 * QWEN_QUANT_NONE; any other value on it is QWEN_ERR_INVALID_ARG. A value not listed here:
 * QWEN_ERR_INVALID_ARG ("options.quant N is not a qwen_quant ..."). */
typedef enum qwen_quant {
    QWEN_QUANT_NONE = 0,  /* the weights as stored */
    QWEN_QUANT_NF4 = 1,   /* bitsandbytes NF4, blocks of 64 (load_in_4bit, bnb_4bit_quant_type "nf4") */
    QWEN_QUANT_NF4_DQ = 2, /* NF4 with double-quantized statistics (bnb_4bit_use_double_quant) */
    QWEN_QUANT_INT8 = 3   /* bitsandbytes Int8 weights, one scale per row (load_in_8bit); weight-only */
} qwen_quant;

/* Why a generation ended. */
typedef enum qwen_finish {
    QWEN_FINISH_STOP = 0,         /* a stop token (e.g. <|im_end|>) or stop string */
    QWEN_FINISH_LENGTH = 1,       /* max_new_tokens were generated */
    QWEN_FINISH_CONTEXT_FULL = 2, /* the context (max_seq_len) is full */
    QWEN_FINISH_CANCELLED = 3     /* the stream callback returned 0 */
} qwen_finish;

/* Opaque handles. */
typedef struct qwen_model qwen_model;
typedef struct qwen_session qwen_session;

/* Options for qwen_model_load; start from qwen_model_options_default(). */
typedef struct qwen_model_options {
    int32_t backend;      /* a qwen_backend value */
    int32_t dtype;        /* a qwen_dtype value */
    uint32_t max_seq_len; /* KV cache size of each session in tokens; 0 = the model's limit */
    uint32_t threads;     /* CPU worker threads, at most 1024; 0 = all cores */
    int32_t quant;        /* a qwen_quant value; QWEN_QUANT_NONE = the weights as stored */
} qwen_model_options;

/* Sampling (Hugging Face semantics). qwen_session_options_default fills it from the model's
 * generation_config.json. */
typedef struct qwen_sampling {
    int32_t do_sample;        /* 0 = greedy (argmax) */
    float temperature;        /* >= 0; below 1e-5 acts as greedy */
    uint32_t top_k;           /* 0 = off */
    float top_p;              /* in (0, 1]; 1 = off */
    float repetition_penalty; /* > 0; 1 = off */
    uint64_t seed;            /* the same seed and inputs give the same output */
} qwen_sampling;

/* Options for qwen_session_create; start from qwen_session_options_default(). */
typedef struct qwen_session_options {
    const char *system;       /* system prompt (copied); NULL = "You are a helpful assistant." */
    qwen_sampling sampling;
    uint32_t max_new_tokens;  /* >= 1: most tokens generated per answer */
    uint32_t max_window_size; /* >= 1: history is dropped, oldest first, to keep the prompt under this */
} qwen_session_options;

/* Stream callback: receives each new piece of output text (NUL-terminated UTF-8, never empty, valid only
 * during the call; U+0000 in the output is passed as U+FFFD). Return non-zero to continue, 0 to stop
 * (the generation then ends with QWEN_FINISH_CANCELLED). Called on the thread that made the call. It
 * must return normally (no longjmp, no C++ exception) and must not call functions on the same session
 * (they return QWEN_ERR_BUSY). */
typedef int (*qwen_stream_cb)(const char *piece, void *user_data);

/* ---- library ---- */

/* The library version, e.g. "0.1.0". Static string. */
const char *qwen_version(void);

/* The message of the last failed call on this thread ("" if the last call succeeded, even when a call
 * made from its stream callback failed). Owned by the
 * library; valid until the next qwen_* call on this thread. Never NULL. */
const char *qwen_last_error(void);

/* The enumerator name of a status, e.g. "QWEN_ERR_BUSY" ("QWEN_ERR_UNKNOWN" for other values). Static. */
const char *qwen_status_name(int32_t status);

/* ---- model ---- */

/* backend AUTO, dtype AUTO, max_seq_len 0 (model limit), threads 0 (all cores), quant NONE. */
qwen_model_options qwen_model_options_default(void);

/* Load a Hugging Face Qwen v1 model directory (config.json, generation_config.json, safetensors,
 * qwen.tiktoken; without qwen.tiktoken the built-in vocabulary is used), or QWEN_TINY_MODEL.
 * options: NULL = qwen_model_options_default(). On success *out_model is a new handle
 * (free with qwen_model_free); on failure NULL.
 * Model files must be regular files (a FIFO or a directory gives QWEN_ERR_MODEL); weights holding NaN
 * or inf are refused (QWEN_ERR_MODEL naming the tensor). The weights stay memory-mapped for the model's
 * lifetime: if a weight file is truncated meanwhile, generating calls return QWEN_ERR_MODEL naming the
 * file and the process does not receive SIGBUS. The library installs a SIGBUS handler on first load
 * that passes signals outside its own maps to the handler installed before it; set QWEN_MMAP_GUARD=0
 * to turn it off. Replace model files by renaming a new file over the old one, never in place. */
qwen_status qwen_model_load(const char *path, const qwen_model_options *options, qwen_model **out_model);

/* Free a model handle. Sessions created from it keep working (they keep the model alive).
 * NULL: no-op. A freed or foreign pointer: QWEN_ERR_INVALID_HANDLE. */
qwen_status qwen_model_free(qwen_model *model);

/* The backend the model runs on: "cpu" or "cuda" (static string). */
qwen_status qwen_model_backend(const qwen_model *model, const char **out_name);

/* ---- tokenizer ---- */

/* Encode text to token ids. parse_special != 0: special-token text such as <|im_start|> becomes the
 * special id; 0: it is plain text (injection-safe). On success *out_tokens holds *out_len ids, to be
 * freed with qwen_free_tokens(*out_tokens, *out_len); empty text gives NULL and 0. */
qwen_status qwen_tokenize(const qwen_model *model, const char *text, int32_t parse_special,
                          uint32_t **out_tokens, size_t *out_len);

/* Decode ids to text: the exact token bytes concatenated (special ids give their text). The result may
 * be invalid UTF-8 when the ids split a character, and may contain NUL bytes: use *out_len.
 * *out_text is NUL-terminated (free with qwen_free_string); out_len may be NULL. tokens may be NULL
 * when n_tokens is 0. An id outside the vocabulary: QWEN_ERR_INVALID_ARG. */
qwen_status qwen_detokenize(const qwen_model *model, const uint32_t *tokens, size_t n_tokens,
                            char **out_text, size_t *out_len);

/* Free ids from qwen_tokenize; n_tokens must be the length returned with them (else
 * QWEN_ERR_INVALID_ARG and nothing is freed). NULL: no-op. */
qwen_status qwen_free_tokens(uint32_t *tokens, size_t n_tokens);

/* Free a string returned by this library (not the static ones). NULL: no-op. */
qwen_status qwen_free_string(char *text);

/* ---- sessions ---- */

/* Fill *out_options with the model's defaults: system NULL (the default prompt), sampling, max_new_tokens
 * and max_window_size from its generation_config.json, seed 0. */
qwen_status qwen_session_options_default(const qwen_model *model, qwen_session_options *out_options);

/* Create a chat session (a KV cache of max_seq_len tokens, a sampler, an empty history) on a model.
 * options: NULL = qwen_session_options_default(model). Invalid sampling values, max_new_tokens outside
 * 1..1048576 or max_window_size 0: QWEN_ERR_INVALID_ARG. QWEN_MAX_SESSIONS_PER_MODEL live sessions on
 * the model already: QWEN_ERR_BUSY. On success free *out_session with qwen_session_free. */
qwen_status qwen_session_create(const qwen_model *model, const qwen_session_options *options,
                                qwen_session **out_session);

/* Free a session. NULL: no-op. A session in use (a call is running on it): QWEN_ERR_BUSY, not freed. */
qwen_status qwen_session_free(qwen_session *session);

/* Forget the conversation history (the system prompt and options stay). */
qwen_status qwen_session_reset(qwen_session *session);

/* Send one user message in ChatML (with the history, as Qwen's model.chat) and generate the answer.
 * Each piece of the answer goes to on_piece (may be NULL) as it is produced. If out_answer is not NULL it
 * receives the whole answer (what on_piece received, concatenated; free with qwen_free_string). If
 * out_finish is not NULL it receives why the answer ended. The exchange joins the history unless it was
 * cancelled. A prompt that does not fit in the context: QWEN_ERR_CONTEXT_FULL (nothing is generated). */
qwen_status qwen_session_send(qwen_session *session, const char *message, qwen_stream_cb on_piece,
                              void *user_data, char **out_answer, qwen_finish *out_finish);

/* Continue raw text (Qwen's "raw" format: special-token text is parsed; stops at <|endoftext|> or the
 * string "Human:"), using the session's sampler and max_new_tokens. The history is neither used nor
 * changed. Callback and out-parameters as in qwen_session_send. */
qwen_status qwen_session_generate(qwen_session *session, const char *prompt, qwen_stream_cb on_piece,
                                  void *user_data, char **out_text, qwen_finish *out_finish);

/* As qwen_session_generate, from token ids (n_tokens >= 1; an id outside the model's vocabulary:
 * QWEN_ERR_INVALID_ARG). */
qwen_status qwen_session_generate_tokens(qwen_session *session, const uint32_t *tokens, size_t n_tokens,
                                         qwen_stream_cb on_piece, void *user_data, char **out_text,
                                         qwen_finish *out_finish);

#ifdef __cplusplus
}
#endif

#endif /* QWEN_H */
