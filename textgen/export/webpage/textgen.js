/* textgen's character model engine for browsers and Node: no dependencies, no build step.
 *
 * It steps the cells textgen trains (Keras's LSTMCell, GRUCell with reset_after=True and
 * SimpleRNNCell, one or more layers) one character at a time on the weights that
 * `textgen export RUN OUT --format web` writes to model.js, and draws each character by
 * textgen's rules: temperature, then top-k, then top-p; temperature 0 is greedy; the unknown
 * id is never drawn.
 *
 * In a page, load model.js and then this file: `window.textgen.model` is the loaded model.
 * In Node, `require("./textgen.js").model` loads model.js from this file's folder.
 * The API is documented in textgen's docs/web-export.md.
 */
(function (root, factory) {
  "use strict";
  const api = factory(root);
  if (typeof module === "object" && module.exports) {
    module.exports = api;
  } else {
    root.textgen = api;
  }
})(typeof globalThis !== "undefined" ? globalThis : this, function (root) {
  "use strict";

  const FORMAT = 1; // the layout of model.js this engine reads
  const CELLS = { lstm: 4, gru: 3, simple: 1 }; // gate blocks of `units` columns per cell
  const UNKNOWN_CHAR = "\ufffd";
  const SLICE_MS = 25; // generation yields to the page this often, so text shows as it comes

  // -- weights -----------------------------------------------------------------------------------

  function bytesOf(text) {
    if (typeof Buffer === "function" && typeof Buffer.from === "function") {
      return new Uint8Array(Buffer.from(text, "base64")); // a copy: offset 0, aligned
    }
    const binary = atob(text);
    const out = new Uint8Array(binary.length);
    for (let i = 0; i < binary.length; i++) out[i] = binary.charCodeAt(i);
    return out;
  }

  let halfTable = null;

  // Every float16 bit pattern's value, so decoding a weight is one lookup.
  function halves() {
    if (halfTable) return halfTable;
    halfTable = new Float32Array(65536);
    for (let bits = 0; bits < 65536; bits++) {
      const sign = bits & 0x8000 ? -1 : 1;
      const exponent = (bits >> 10) & 0x1f;
      const fraction = bits & 0x3ff;
      let value;
      if (exponent === 0) value = fraction * Math.pow(2, -24);
      else if (exponent === 31) value = fraction ? NaN : Infinity;
      else value = (1 + fraction / 1024) * Math.pow(2, exponent - 15);
      halfTable[bits] = sign * value;
    }
    return halfTable;
  }

  const littleEndian = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

  function tensor(data, name, shape) {
    const entry = data.weights[name];
    if (!entry) throw new Error(`model.js has no weight ${name}`);
    const size = shape.reduce((a, b) => a * b, 1);
    if (JSON.stringify(entry.shape) !== JSON.stringify(shape)) {
      throw new Error(`weight ${name} has shape [${entry.shape}], expected [${shape}]`);
    }
    const bytes = bytesOf(entry.data);
    let values;
    if (data.dtype === "float32") {
      values = new Float32Array(bytes.buffer, 0, bytes.length >> 2);
    } else {
      const bits = new Uint16Array(bytes.buffer, 0, bytes.length >> 1);
      const table = halves();
      values = new Float32Array(bits.length);
      for (let i = 0; i < bits.length; i++) values[i] = table[bits[i]];
    }
    if (values.length !== size) throw new Error(`weight ${name} holds the wrong number of values`);
    return values;
  }

  // -- products ----------------------------------------------------------------------------------
  //
  // Almost all of a step's time goes into matrix-vector products: (4 * units, units) for an
  // LSTM's recurrent weights. Each matrix is stored transposed, one row per output, its rows
  // padded with zeros to a multiple of 16 values, in one arena of float32s. The product runs in
  // a WebAssembly SIMD function where the runtime offers one (four lanes, four sums), else in
  // plain JavaScript on the same arena; docs/web-export.md gives both speeds.

  const PAD = 16; // values per row are padded to this (the SIMD loop reads 16 per turn)
  const padded = (count) => Math.ceil(count / PAD) * PAD;

  // The SIMD module's bytes, assembled here so that the folder needs no .wasm file (a page
  // opened from disk may not fetch one). It imports its memory as env.memory and exports
  // dot(w, x, out, rows, cols): out[j] = sum_k w[j * cols + k] * x[k] for j < rows; pointers in
  // bytes, cols a positive multiple of 16.
  function simdModule() {
    const get = (i) => [0x20, i], set = (i) => [0x21, i], tee = (i) => [0x22, i];
    const load = (offset) => [0xfd, 0x00, 0x04, offset]; // v128.load, align 16
    const mul = [0xfd, 0xe6, 0x01], add = [0xfd, 0xe4, 0x01]; // f32x4.mul, f32x4.add
    const lane = (i) => [0xfd, 0x1f, i]; // f32x4.extract_lane
    // params: 0 w, 1 x, 2 out, 3 rows, 4 cols; locals: 5 p, 6 end, 7..10 four sums
    const sum = (acc, offset) => [...get(acc), ...get(0), ...load(offset), ...get(5),
      ...load(offset), ...mul, ...add, ...set(acc)];
    const body = [
      0x02, 0x02, 0x7f, 0x04, 0x7b, // locals: 2 i32, 4 v128
      ...get(1), ...get(4), 0x41, 0x02, 0x74, 0x6a, ...set(6), // end = x + cols * 4
      ...get(3), 0x45, 0x04, 0x40, 0x0f, 0x0b, // no rows: return
      0x03, 0x40, // loop over rows
      0xfd, 0x0c, ...new Array(16).fill(0), ...tee(7), ...tee(8), ...tee(9), ...set(10),
      ...get(1), ...set(5),
      0x03, 0x40, // loop over the row, 16 values a turn
      ...sum(7, 0x00), ...sum(8, 0x10), ...sum(9, 0x20), ...sum(10, 0x30),
      ...get(0), 0x41, 0xc0, 0x00, 0x6a, ...set(0), // w += 64
      ...get(5), 0x41, 0xc0, 0x00, 0x6a, ...tee(5), ...get(6), 0x49, 0x0d, 0x00, // p += 64; p < end
      0x0b,
      ...get(7), ...get(8), ...add, ...get(9), ...get(10), ...add, ...add, ...set(7),
      ...get(2), ...get(7), ...lane(0), ...get(7), ...lane(1), 0x92, ...get(7), ...lane(2),
      ...get(7), ...lane(3), 0x92, 0x92, 0x38, 0x02, 0x00, // f32.store at out
      ...get(2), 0x41, 0x04, 0x6a, ...set(2), // out += 4
      ...get(3), 0x41, 0x01, 0x6b, ...tee(3), 0x0d, 0x00, // rows -= 1; loop while rows
      0x0b,
      0x0b,
    ];
    const bytes = (text) => Array.from(text, (c) => c.charCodeAt(0));
    const leb = (n) => {
      const out = [];
      do {
        let byte = n & 0x7f;
        n >>>= 7;
        if (n) byte |= 0x80;
        out.push(byte);
      } while (n);
      return out;
    };
    const section = (id, content) => [id, ...leb(content.length), ...content];
    const code = [0x01, ...leb(body.length), ...body];
    return new Uint8Array([
      0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00,
      ...section(1, [0x01, 0x60, 0x05, 0x7f, 0x7f, 0x7f, 0x7f, 0x7f, 0x00]),
      ...section(2, [0x01, 0x03, ...bytes("env"), 0x06, ...bytes("memory"), 0x02, 0x00, 0x01]),
      ...section(3, [0x01, 0x00]),
      ...section(7, [0x01, 0x03, ...bytes("dot"), 0x00, 0x00]),
      ...section(10, code),
    ]);
  }

  function simdAvailable() {
    try {
      return typeof WebAssembly === "object" && WebAssembly.validate(simdModule());
    } catch (err) {
      return false;
    }
  }

  // Plain JavaScript's dot: the same contract as the SIMD one, on float indices.
  function dotJs(a, w, x, out, rows, cols) {
    for (let j = 0; j < rows; j++, w += cols) {
      let s0 = 0, s1 = 0, s2 = 0, s3 = 0;
      for (let k = 0; k < cols; k += 4) {
        s0 += a[w + k] * a[x + k];
        s1 += a[w + k + 1] * a[x + k + 1];
        s2 += a[w + k + 2] * a[x + k + 2];
        s3 += a[w + k + 3] * a[x + k + 3];
      }
      a[out + j] = s0 + s1 + (s2 + s3);
    }
  }

  /** The matrices of a model in one float32 arena, and the product over them. */
  class Products {
    constructor(matrices, engine) {
      // matrices: [{values (rows, cols) row-major, rows, cols}], each stored transposed.
      let size = 0, widest = 0, tallest = 0;
      for (const m of matrices) {
        m.stride = padded(m.rows); // the transposed matrix's row length: its input's size
        m.at = size;
        size += m.cols * m.stride;
        widest = Math.max(widest, m.stride);
        tallest = Math.max(tallest, m.cols);
      }
      this.x = size; // where a product's input goes
      this.out = this.x + widest; // and its output
      size = this.out + padded(tallest);
      this.tallest = tallest;
      if (engine === undefined) engine = simdAvailable() ? "wasm-simd" : "js";
      if (engine === "wasm-simd") {
        const memory = new WebAssembly.Memory({ initial: Math.ceil((size * 4) / 65536) });
        const instance = new WebAssembly.Instance(new WebAssembly.Module(simdModule()), {
          env: { memory },
        });
        this.arena = new Float32Array(memory.buffer, 0, size);
        this.simd = instance.exports.dot;
      } else if (engine === "js") {
        this.arena = new Float32Array(size);
        this.simd = null;
      } else {
        throw new Error(`unknown engine ${JSON.stringify(engine)}; choose wasm-simd or js`);
      }
      this.engine = engine;
      this.result = this.arena.subarray(this.out, this.out + tallest);
      for (const m of matrices) {
        const a = this.arena, values = m.values;
        for (let r = 0; r < m.rows; r++) {
          for (let c = 0; c < m.cols; c++) a[m.at + c * m.stride + r] = values[r * m.cols + c];
        }
        delete m.values;
      }
    }

    /** matrix^T @ vector, in the first entries of a view that the next product overwrites. */
    apply(m, vector) {
      const a = this.arena;
      a.set(vector, this.x);
      if (vector.length < m.stride) a.fill(0, this.x + vector.length, this.x + m.stride);
      if (this.simd) this.simd(m.at * 4, this.x * 4, this.out * 4, m.cols, m.stride);
      else dotJs(a, m.at, this.x, this.out, m.cols, m.stride);
      return this.result;
    }
  }

  function sigmoid(x) {
    return 1 / (1 + Math.exp(-x));
  }

  // V8's Math.tanh costs twice its Math.exp; this form is exact to double rounding and saturates
  // cleanly (exp overflowing to Infinity gives 1).
  function tanh(x) {
    return 1 - 2 / (Math.exp(2 * x) + 1);
  }

  // -- the model ---------------------------------------------------------------------------------

  /**
   * A loaded character model. `data` is what model.js holds; `options.engine` picks the
   * products' engine ("wasm-simd" or "js"; by default SIMD where the runtime has it).
   */
  class Model {
    constructor(data, options = {}) {
      if (!littleEndian) throw new Error("textgen.js needs a little-endian machine");
      if (!data || data.format !== FORMAT) {
        throw new Error(`model.js is not a textgen web model of format ${FORMAT}`);
      }
      if (!(data.cell in CELLS)) throw new Error(`unknown cell ${JSON.stringify(data.cell)}`);
      if (data.dtype !== "float32" && data.dtype !== "float16") {
        throw new Error(`unknown weight type ${JSON.stringify(data.dtype)}`);
      }
      this.cell = data.cell;
      this.numLayers = data.num_layers;
      this.units = data.units;
      this.embeddingDim = data.embedding_dim;
      this.dtype = data.dtype;
      this.details = data.details || {};
      this.chars = Array.from(data.vocabulary.chars);
      this.unknownId = data.vocabulary.unknown ? this.chars.length : null;
      this.vocabSize = this.chars.length + (this.unknownId === null ? 0 : 1);
      this.index = new Map(this.chars.map((c, i) => [c, i]));
      const n = this.units, gates = CELLS[this.cell], width = gates * n, vocab = this.vocabSize;
      this.gates = gates;
      const embedding = tensor(data, "embedding", [vocab, this.embeddingDim]);
      const matrices = [];
      this.layers = [];
      let input = this.embeddingDim;
      for (let i = 0; i < this.numLayers; i++) {
        const name = `rnn_${i}`;
        const kernel = tensor(data, `${name}/kernel`, [input, width]);
        const values = tensor(data, `${name}/recurrent_kernel`, [n, width]);
        const recurrent = { values, rows: n, cols: width };
        const bias = tensor(data, `${name}/bias`, this.cell === "gru" ? [2, width] : [width]);
        const layer = {
          recurrent,
          bias: bias.subarray(0, width), // the input part's bias
          recurrentBias: this.cell === "gru" ? bias.subarray(width) : new Float32Array(width),
        };
        matrices.push(recurrent);
        if (i === 0) {
          // Layer 0 only ever sees embedding rows: its input projection is one table row.
          layer.table = new Float32Array(vocab * width);
          for (let v = 0; v < vocab; v++) {
            for (let j = 0; j < width; j++) {
              let s = layer.bias[j];
              for (let k = 0; k < input; k++) s += embedding[v * input + k] * kernel[k * width + j];
              layer.table[v * width + j] = s;
            }
          }
        } else {
          layer.kernel = { values: kernel, rows: input, cols: width };
          matrices.push(layer.kernel);
        }
        this.layers.push(layer);
        input = n;
      }
      this.dense = { values: tensor(data, "dense/kernel", [n, vocab]), rows: n, cols: vocab };
      matrices.push(this.dense);
      this.denseBias = tensor(data, "dense/bias", [vocab]);
      this.products = new Products(matrices, options.engine);
      this.engine = this.products.engine;
    }
    /** The ids of `text`; characters outside the vocabulary are the unknown id, or an error. */
    encode(text) {
      const ids = [], missing = new Set();
      for (const ch of String(text)) {
        const id = this.index.get(ch);
        if (id !== undefined) ids.push(id);
        else if (this.unknownId !== null) ids.push(this.unknownId);
        else missing.add(ch);
      }
      if (missing.size) {
        const shown = Array.from(missing).sort().slice(0, 10).map((c) => JSON.stringify(c));
        throw new RangeError(`characters not in the vocabulary: ${shown.join(", ")}`);
      }
      return ids;
    }

    /** The text of a sequence of ids (the unknown id reads as U+FFFD). */
    decode(ids) {
      const char = (id) => (id === this.unknownId ? UNKNOWN_CHAR : this.chars[id]);
      return Array.from(ids, char).join("");
    }

    /** The ids fed before a sample: the prime's, or a newline's (else a space's, else id 0). */
    primeIds(prime) {
      const ids = this.encode(prime);
      if (ids.length) return ids;
      for (const start of ["\n", " "]) if (this.index.has(start)) return [this.index.get(start)];
      return [0];
    }

    /** A new stream in the zero state: `step(id)` feeds one id and returns the next logits. */
    stream() {
      return new Stream(this);
    }

    /** The logits after each character of `text` (a Float32Array per character), from zero. */
    logits(text) {
      const stream = this.stream();
      return this.encode(text).map((id) => Float32Array.from(stream.step(id)));
    }

    /**
     * Generate `length` characters after `prime`; a Promise of the text, without the prime.
     *
     * options: length (default 200), temperature (default 1; 0 is greedy), topK, topP, seed
     * (the same seed gives the same text; none picks one at random), onText (called with each
     * new piece of text as it is produced), signal (an AbortSignal: generation stops and the
     * Promise resolves with the text so far).
     */
    generate(prime = "", options = {}) {
      return new Promise((resolve, reject) => {
        let run;
        try {
          run = this._start(prime, options);
        } catch (err) {
          reject(err);
          return;
        }
        run(resolve, reject);
      });
    }

    _start(prime, options) {
      const o = checkOptions(options || {});
      if (prime != null && typeof prime !== "string") {
        throw new TypeError("the prime must be a string");
      }
      const ids = this.primeIds(prime == null ? "" : prime);
      const stream = this.stream();
      const draw = new Draw(this, o);
      const stopped = () => o.signal !== null && o.signal.aborted;
      return (resolve, reject) => {
        let fed = 0, produced = 0, text = "", logits = null;
        // A slice feeds the prime, then draws, until its time is up: a long prime does not
        // freeze the page either.
        const slice = () => {
          try {
            const until = now() + SLICE_MS;
            let piece = "", count = 0;
            while (fed < ids.length && !stopped()) {
              logits = stream.step(ids[fed++]);
              if ((++count & 15) === 0 && now() >= until) break;
            }
            while (fed === ids.length && produced < o.length && !stopped()) {
              const id = draw.next(logits);
              piece += this.chars[id];
              produced++;
              if (produced < o.length) logits = stream.step(id);
              if ((++count & 15) === 0 && now() >= until) break;
            }
            text += piece;
            if (piece && o.onText) o.onText(piece);
            if (produced >= o.length || stopped()) resolve(text);
            else later(slice);
          } catch (err) {
            reject(err);
          }
        };
        slice();
      };
    }
  }

  /** One sequence's recurrent state over a model's weights. */
  class Stream {
    constructor(model) {
      const n = model.units, width = model.gates * n;
      this.model = model;
      this.h = model.layers.map(() => new Float32Array(n));
      this.c = model.cell === "lstm" ? model.layers.map(() => new Float32Array(n)) : null;
      this.x = new Float32Array(width); // a layer's input projection, bias included
      this.out = new Float32Array(model.vocabSize);
    }

    /** Feed one id; return the next-id logits (a buffer the next step overwrites). */
    step(id) {
      const m = this.model, n = m.units, width = m.gates * n, products = m.products;
      if (!(Number.isInteger(id) && id >= 0 && id < m.vocabSize)) {
        throw new RangeError(`id ${id} is outside the vocabulary`);
      }
      for (let i = 0; i < m.layers.length; i++) {
        const layer = m.layers[i], h = this.h[i];
        let x = this.x, at = 0;
        if (i === 0) {
          x = layer.table; // the row of this id holds the input projection
          at = id * width;
        } else {
          const below = products.apply(layer.kernel, this.h[i - 1]);
          for (let j = 0; j < width; j++) x[j] = below[j] + layer.bias[j];
        }
        const g = products.apply(layer.recurrent, h), rb = layer.recurrentBias;
        if (m.cell === "lstm") {
          // Keras's gate order: input, forget, candidate, output.
          const c = this.c[i], f = at + n, o = at + 3 * n, cc = at + 2 * n;
          for (let k = 0; k < n; k++) {
            const input = sigmoid(x[at + k] + g[k]);
            const forget = sigmoid(x[f + k] + g[n + k]);
            const candidate = tanh(x[cc + k] + g[2 * n + k]);
            const output = sigmoid(x[o + k] + g[3 * n + k]);
            const cell = forget * c[k] + input * candidate;
            c[k] = cell;
            h[k] = output * tanh(cell);
          }
        } else if (m.cell === "gru") {
          // reset_after=True: the reset gate scales the recurrent projection, its bias included.
          for (let k = 0; k < n; k++) {
            const update = sigmoid(x[at + k] + g[k] + rb[k]);
            const reset = sigmoid(x[at + n + k] + g[n + k] + rb[n + k]);
            const candidate = tanh(x[at + 2 * n + k] + reset * (g[2 * n + k] + rb[2 * n + k]));
            h[k] = update * h[k] + (1 - update) * candidate;
          }
        } else {
          for (let k = 0; k < n; k++) h[k] = tanh(x[at + k] + g[k]);
        }
      }
      const top = products.apply(m.dense, this.h[m.layers.length - 1]), out = this.out;
      const bias = m.denseBias;
      for (let v = 0; v < out.length; v++) out[v] = top[v] + bias[v];
      return out;
    }
  }

  // -- drawing -----------------------------------------------------------------------------------

  const OPTIONS = ["length", "temperature", "topK", "topP", "seed", "onText", "signal"];

  function checkOptions(options) {
    if (typeof options !== "object") throw new TypeError("the options must be an object");
    for (const name of Object.keys(options)) {
      // A misspelt option (top_k, maxTokens) would otherwise be ignored without a word.
      if (!OPTIONS.includes(name)) {
        throw new TypeError(`unknown option ${name}; the options are ${OPTIONS.join(", ")}`);
      }
    }
    const o = {
      length: options.length === undefined ? 200 : options.length,
      temperature: options.temperature === undefined ? 1 : options.temperature,
      topK: options.topK == null ? null : options.topK,
      topP: options.topP == null ? null : options.topP,
      seed: options.seed == null ? null : options.seed,
      onText: options.onText || null,
      signal: options.signal || null,
    };
    if (!Number.isInteger(o.length) || o.length < 0) {
      throw new RangeError(`length must be a whole number >= 0, got ${o.length}`);
    }
    if (typeof o.temperature !== "number" || !Number.isFinite(o.temperature) || o.temperature < 0) {
      throw new RangeError(`temperature must be a finite number >= 0, got ${o.temperature}`);
    }
    if (o.topK !== null && (!Number.isInteger(o.topK) || o.topK < 1)) {
      throw new RangeError(`topK must be a whole number >= 1, got ${o.topK}`);
    }
    if (o.topP !== null && !(typeof o.topP === "number" && o.topP > 0 && o.topP <= 1)) {
      throw new RangeError(`topP must be in (0, 1], got ${o.topP}`);
    }
    if (o.seed !== null && !Number.isSafeInteger(o.seed)) {
      throw new RangeError(`seed must be a whole number, got ${o.seed}`);
    }
    if (o.onText !== null && typeof o.onText !== "function") {
      throw new TypeError("onText must be a function");
    }
    return o;
  }

  // xoshiro128**, seeded through splitmix32 from the seed's two 32-bit halves.
  function generator(seed) {
    if (seed === null) {
      const words = new Uint32Array(2);
      if (root.crypto && root.crypto.getRandomValues) root.crypto.getRandomValues(words);
      else for (let i = 0; i < 2; i++) words[i] = Math.floor(Math.random() * 4294967296);
      seed = words[0] + (words[1] & 0x1fffff) * 4294967296;
    }
    let mix = (seed >>> 0) ^ Math.imul(Math.floor(seed / 4294967296) | 0, 0x9e3779b9);
    const next32 = () => {
      mix = (mix + 0x9e3779b9) | 0;
      let z = mix;
      z = Math.imul(z ^ (z >>> 16), 0x85ebca6b);
      z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35);
      return (z ^ (z >>> 16)) >>> 0;
    };
    const s = new Uint32Array([next32(), next32(), next32(), next32()]);
    return () => {
      const five = Math.imul(s[1], 5);
      const result = Math.imul((five << 7) | (five >>> 25), 9) >>> 0;
      const t = s[1] << 9;
      s[2] ^= s[0];
      s[3] ^= s[1];
      s[1] ^= s[2];
      s[0] ^= s[3];
      s[2] ^= t;
      s[3] = (s[3] << 11) | (s[3] >>> 21);
      return (result + 0.5) / 4294967296; // uniform in (0, 1), never 0 or 1
    };
  }

  /** Draws ids from logits by textgen's rules (textgen/draw.py). */
  class Draw {
    constructor(model, o) {
      this.o = o;
      this.exclude = model.unknownId;
      this.z = new Float64Array(model.vocabSize);
      this.random = o.temperature > 0 ? generator(o.seed) : null;
    }

    next(logits) {
      const o = this.o, z = this.z, vocab = z.length;
      for (let i = 0; i < vocab; i++) z[i] = logits[i];
      if (this.exclude !== null) z[this.exclude] = -Infinity;
      if (o.temperature === 0) return argmax(z);
      for (let i = 0; i < vocab; i++) z[i] /= o.temperature;
      if (o.topK !== null && o.topK < vocab) {
        const kth = Float64Array.from(z).sort().reverse()[o.topK - 1];
        for (let i = 0; i < vocab; i++) if (z[i] < kth) z[i] = -Infinity; // ties stay
      }
      if (o.topP !== null && o.topP < 1) keepNucleus(z, o.topP);
      // The exponential race (Gumbel-max): argmax(z - log E) with E ~ Exp(1) draws from
      // softmax(z) without normalising it.
      for (let i = 0; i < vocab; i++) z[i] -= Math.log(-Math.log(this.random()));
      return argmax(z);
    }
  }

  function argmax(z) {
    let best = 0;
    for (let i = 1; i < z.length; i++) if (z[i] > z[best]) best = i;
    return best;
  }

  // Set to -Infinity every logit outside the smallest set of most likely ids reaching mass p.
  function keepNucleus(z, p) {
    const ordered = Float64Array.from(z).sort().reverse();
    let total = 0;
    const probs = ordered.map((v) => Math.exp(v - ordered[0]));
    for (const q of probs) total += q;
    let before = 0, keep = 0;
    for (let i = 0; i < probs.length; i++) {
      if (before / total < p) keep = i + 1; // kept while the mass before it is short of p
      before += probs[i];
    }
    const threshold = ordered[keep - 1];
    for (let i = 0; i < z.length; i++) if (z[i] < threshold) z[i] = -Infinity;
  }

  // -- timing ------------------------------------------------------------------------------------

  const now = () => (root.performance ? root.performance.now() : Date.now());

  // The next slice of a generation runs after the page has had its turn (setTimeout would be
  // clamped to 4 ms in a busy page; a message is not).
  const later = (function () {
    if (typeof setImmediate === "function") return setImmediate;
    if (typeof MessageChannel === "function") {
      const channel = new MessageChannel(), queue = [];
      channel.port1.onmessage = () => queue.shift()();
      return (fn) => {
        queue.push(fn);
        channel.port2.postMessage(0);
      };
    }
    return (fn) => setTimeout(fn, 0);
  })();

  // -- loading -----------------------------------------------------------------------------------

  /** A Model of the data model.js holds (options: see Model). */
  function load(data, options) {
    return new Model(data, options);
  }

  const api = { FORMAT, Model, Stream, load, simdAvailable };
  let loaded = null;
  if (typeof module === "object" && module.exports && typeof require === "function") {
    // Node: the model.js of this file's folder, read when first asked for.
    Object.defineProperty(api, "model", {
      enumerable: true,
      get() {
        if (!loaded) loaded = load(require(require("path").join(__dirname, "model.js")));
        return loaded;
      },
    });
  } else if (root.TEXTGEN_MODEL_DATA) {
    api.model = load(root.TEXTGEN_MODEL_DATA);
  }
  return api;
});
