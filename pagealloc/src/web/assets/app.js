'use strict';
// pagealloc's web view. Served by `pagealloc serve` (data from /api/...) or saved as one
// HTML report (`--format html`, the same documents inline). Every string from the data goes
// into the page as text, never as markup.
(() => {
  const embedded = document.getElementById('pagealloc-data');
  const DATA = embedded ? JSON.parse(embedded.textContent) : null;
  const REPORT = DATA !== null;
  const main = document.getElementById('main');
  const status = document.getElementById('status');
  const crumbs = document.getElementById('crumbs');
  const tooltip = document.getElementById('tooltip');

  // Heap pictures: pixels per row, and rows a heap shows at once.
  const WIDTH = 1024;
  const ROWS = 160;
  const PAGE_WIDTH = 256;
  const PAGE_PIXEL = 4; // CSS pixels a page pixel is drawn as
  const GRANULE = 16;

  // ---- data -------------------------------------------------------------------------------
  class NotInReport extends Error {}

  async function api(name, params = {}) {
    if (REPORT) return fromReport(name, params);
    const query = new URLSearchParams(params).toString();
    const response = await fetch(`api/${name}${query ? '?' + query : ''}`, { cache: 'no-store' });
    if (!response.ok) throw new Error(`${response.status}: ${(await response.text()).trim()}`);
    return response.json();
  }

  // The report holds one sample's documents, and its heap map whole at some scales: a range
  // of it is a slice.
  function fromReport(name, params) {
    if (name === 'heap-map') {
      const whole = DATA[`heap-map:${params.scale}`];
      if (!whole) throw new NotInReport(`this report holds the heap map down to ${finestReportScale()} bytes a pixel`);
      const segment = whole.segments.find((s) => s.index === Number(params.segment));
      const from = Math.max(segment.start, Number(params.from));
      const first = Math.floor((from - segment.start) / whole.scale);
      const last = Math.ceil((Math.min(Number(params.to), segment.end) - segment.start) / whole.scale);
      const pixels = segment.pixels.slice(first, last);
      const start = segment.start + first * whole.scale;
      return { scale: whole.scale, segments: [{ ...segment, from: start, to: Math.min(segment.end, start + pixels.length * whole.scale), pixels }] };
    }
    if (!(name in DATA)) throw new NotInReport(`this report has no ${name}`);
    return DATA[name];
  }

  function finestReportScale() {
    const scales = Object.keys(DATA).filter((k) => k.startsWith('heap-map:')).map((k) => Number(k.slice(9)));
    return Math.min(...scales);
  }

  // ---- formatting ----------------------------------------------------------------------------
  function bytes(n) {
    if (n === null || n === undefined) return '–';
    const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
    let u = 0;
    let v = n;
    while (Math.abs(v) >= 1024 && u < units.length - 1) { v /= 1024; u += 1; }
    return u === 0 ? `${n} B` : `${v.toFixed(v < 10 ? 2 : 1)} ${units[u]}`;
  }
  const hex = (n) => '0x' + n.toString(16);
  const time = (seconds) => new Date(seconds * 1000).toLocaleTimeString();

  // An element: el('td', {class: 'text', 'data-key': 'x'}, 'text', child, ...).
  function el(tag, attributes = {}, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attributes)) {
      if (value === null || value === undefined || value === false) continue;
      if (name.startsWith('on')) node.addEventListener(name.slice(2), value);
      else node.setAttribute(name, value === true ? '' : String(value));
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function say(text, error = false) {
    status.textContent = text;
    status.classList.toggle('error', error);
  }

  // ---- the resident parts and the heap states, in the order the metrics have them -----------
  const PARTS = [
    ['heap_live', 'heap live', '#e4e4e4'], ['heap_free', 'heap free', '#0087ff'],
    ['heap_overhead', 'heap overhead', '#af00af'], ['heap_unknown', 'heap unknown', '#ff0000'],
    ['mmapped_chunks', 'mmapped chunks', '#ffaf00'], ['anon_other', 'other anonymous', '#00af00'],
    ['file', 'file-backed', '#5f87af'],
  ];
  const STATES = ['live', 'tcache', 'fastbin', 'bin', 'top', 'overhead', 'unknown', 'freed'];

  function residentBar(resident, total) {
    const bar = el('div', { class: 'bar', title: PARTS.map(([k, name]) => `${name}: ${bytes(resident[k])}`).join('\n') });
    for (const [key] of PARTS) {
      if (!resident[key] || !total) continue;
      const part = el('span', { class: `part-${key}` });
      part.style.width = `${(100 * resident[key]) / total}%`;
      bar.append(part);
    }
    return bar;
  }

  function legend(items) {
    return el('div', { class: 'legend' }, items.map(([name, color]) => {
      const swatch = el('span', { class: 'swatch' });
      swatch.style.background = color;
      return el('span', {}, swatch, name);
    }));
  }

  // ---- views ---------------------------------------------------------------------------------
  let view = null; // the view shown: { kind, pid, ... }
  let timer = null;
  let generation = -1;

  function route() {
    const match = location.hash.match(/^#\/process\/(\d+)/);
    if (match) return { kind: 'process', pid: Number(match[1]) };
    if (REPORT && location.hash === '') return { kind: 'process', pid: DATA.process.pid };
    return { kind: 'list' };
  }

  async function show() {
    const wanted = route();
    view = wanted.kind === 'process' ? new ProcessView(wanted.pid) : new ListView();
    generation = -1;
    await refresh();
  }

  async function refresh() {
    clearTimeout(timer);
    const shown = view;
    let interval = 2;
    try {
      const list = await api('processes');
      interval = Math.max(1, list.interval_seconds || 2);
      if (shown !== view) return;
      if (list.generation !== generation) {
        generation = list.generation;
        await shown.update(list);
      }
      say(REPORT ? `report of a sample taken ${list.processes.length ? time(list.processes[0].taken) : ''}` : `updated ${new Date().toLocaleTimeString()}`);
    } catch (e) {
      if (shown === view) say(e.message, true);
    }
    if (!REPORT) timer = setTimeout(refresh, interval * 1000);
  }

  class ListView {
    constructor() {
      this.sort = { key: 'rss_bytes', ascending: false };
      crumbs.textContent = '';
      this.body = el('tbody');
      const columns = [
        ['pid', 'PID', (p) => p.pid, (p) => p.pid, 'text'],
        ['comm', 'name', (p) => p.comm, (p) => p.comm, 'text'],
        ['mode', 'mode', (p) => (p.mode === p.why ? p.mode : `${p.mode} (${p.why})`), (p) => p.mode, 'text'],
        ['rss_bytes', 'RSS', (p) => bytes(p.rss_bytes), (p) => p.rss_bytes],
        ['breakdown', 'breakdown', (p) => residentBar(p.resident, p.rss_bytes), null, 'text'],
        ['free_resident_bytes', 'free but resident', (p) => bytes(p.heap && p.heap.free_resident_bytes), (p) => (p.heap ? p.heap.free_resident_bytes : -1)],
        ['trimmable_bytes', 'trimmable', (p) => bytes(p.heap && p.heap.trimmable_bytes), (p) => (p.heap ? p.heap.trimmable_bytes : -1)],
        ['live_bytes', 'heap live', (p) => bytes(p.heap && p.heap.live_bytes), (p) => (p.heap ? p.heap.live_bytes : -1)],
      ];
      this.columns = columns;
      const head = el('tr', {}, columns.map(([key, title, , value, kind]) => el('th', {
        class: kind, 'data-sort': value ? key : null,
        onclick: value ? () => this.sortBy(key) : null,
      }, title)));
      this.head = head;
      main.replaceChildren(
        el('h1', {}, 'Processes followed'),
        el('table', { id: 'processes' }, el('thead', {}, head), this.body),
        legend(PARTS.map(([, name, color]) => [name, color])),
        el('p', { class: 'quiet', id: 'empty', hidden: true }, 'No process is followed yet.'),
      );
    }

    sortBy(key) {
      this.sort = { key, ascending: this.sort.key === key ? !this.sort.ascending : false };
      this.draw();
    }

    async update(list) {
      this.processes = list.processes;
      this.draw();
    }

    draw() {
      const column = this.columns.find((c) => c[0] === this.sort.key);
      const sign = this.sort.ascending ? 1 : -1;
      const rows = [...(this.processes || [])].sort((a, b) => {
        const [x, y] = [column[3](a), column[3](b)];
        return (x < y ? -1 : x > y ? 1 : 0) * sign;
      });
      for (const th of this.head.children) {
        th.classList.toggle('sorted', th.dataset.sort === this.sort.key);
        th.classList.toggle('ascending', this.sort.ascending);
      }
      this.body.replaceChildren(...rows.map((p) => el('tr', {
        class: 'process', 'data-pid': p.pid, onclick: () => { location.hash = `#/process/${p.pid}`; },
      }, this.columns.map(([key, , cell, value, kind]) => el('td', {
        class: kind, 'data-key': key, 'data-value': value ? value(p) : null,
      }, cell(p))))));
      document.getElementById('empty').hidden = rows.length > 0;
    }
  }

  class ProcessView {
    constructor(pid) {
      this.pid = pid;
      this.scale = null;
      this.froms = new Map(); // segment index -> first address shown
      this.measure = 'inuse_bytes';
      this.baseline = null;
      crumbs.replaceChildren('› ', el('span', {}, `process ${pid}`));
      this.title = el('h1', {}, `process ${pid}`);
      this.meta = el('p', { class: 'quiet' });
      this.figures = el('div', { class: 'figures', id: 'figures' });
      this.charts = el('div', { id: 'history' });
      this.heap = el('div', { id: 'heap' });
      this.sites = el('div', { id: 'sites' });
      this.pages = el('div', { id: 'pages' });
      main.replaceChildren(this.title, this.meta, this.figures,
        el('h2', {}, 'Over time'), this.charts,
        el('h2', {}, 'Heap map'), this.heap,
        el('h2', {}, 'Allocation sites'), this.sites,
        el('h2', {}, 'Page map'), this.pages);
    }

    async update(list) {
      const summary = list.processes.find((p) => p.pid === this.pid);
      if (!summary) {
        this.title.textContent = `process ${this.pid}`;
        this.meta.textContent = 'This process is not followed (it exited, or it is not sampled yet).';
        return;
      }
      const process = await api('process', { pid: this.pid });
      this.process = process;
      this.title.textContent = `${process.comm} (${process.pid})`;
      const libc = process.libc ? `glibc ${process.libc.version || '?'} (${process.libc.path})` : 'no C library read';
      this.meta.textContent = `mode ${process.mode}${process.mode === process.why ? '' : ` (${process.why})`} · ${libc} · sampled ${time(process.taken)} in ${(process.sample_seconds * 1000).toFixed(1)} ms`;
      this.drawFigures(process);
      this.drawHistory(await api('history', { pid: this.pid }));
      await this.drawHeap(process);
      await this.drawSites(process);
      this.drawPages(await api('pages', { pid: this.pid }), process);
    }

    drawFigures(p) {
      const row = (key, name, value, text) => el('tr', {}, el('td', { class: 'text' }, name), el('td', { 'data-key': key, 'data-value': value }, text));
      const resident = el('table', { id: 'resident' },
        el('tr', {}, el('th', { class: 'text' }, 'resident'), el('th', {}, '')),
        row('rss_bytes', 'RSS', p.rss_bytes, bytes(p.rss_bytes)),
        PARTS.map(([key, name, color]) => {
          const swatch = el('span', { class: 'swatch' });
          swatch.style.background = color;
          return el('tr', {}, el('td', { class: 'text' }, swatch, name), el('td', { 'data-key': key, 'data-value': p.resident[key] }, bytes(p.resident[key])));
        }));
      const parts = [el('div', {}, resident, residentBar(p.resident, p.rss_bytes))];
      if (p.heap) {
        const t = p.heap.totals;
        const heap = el('table', { id: 'heap-figures' },
          el('tr', {}, el('th', { class: 'text' }, 'heap'), el('th', {}, 'chunks'), el('th', {}, 'bytes')),
          STATES.filter((s) => s !== 'freed' || t.freed_bytes).map((s) => el('tr', {},
            el('td', { class: 'text' }, s),
            el('td', { 'data-key': `${s}_chunks`, 'data-value': t[`${s}_chunks`] }, t[`${s}_chunks`] === undefined ? '' : t[`${s}_chunks`]),
            el('td', { 'data-key': `${s}_bytes`, 'data-value': t[`${s}_bytes`] }, bytes(t[`${s}_bytes`])))),
          el('tr', {}, el('td', { class: 'text' }, 'system'), el('td', {}, ''), el('td', { 'data-key': 'system_bytes', 'data-value': t.system_bytes }, bytes(t.system_bytes))));
        const residency = el('table', { id: 'residency' },
          el('tr', {}, el('th', { class: 'text' }, 'what it costs'), el('th', {}, '')),
          row('free_resident_bytes', 'free but resident', t.free_resident_bytes, bytes(t.free_resident_bytes)),
          row('trimmable_bytes', 'malloc_trim(0) could return', t.trimmable_bytes, bytes(t.trimmable_bytes)),
          row('pinned_bytes', 'free, pinned by live chunks', t.pinned_bytes, bytes(t.pinned_bytes)),
          row('largest_free_bytes', 'largest free chunk', t.largest_free_bytes, bytes(t.largest_free_bytes)),
          row('mmapped_bytes', `mmapped chunks (${p.heap.mmapped_chunks})`, p.heap.mmapped_bytes, bytes(p.heap.mmapped_bytes)),
          row('fragmentation', 'fragmentation', t.fragmentation, `${(t.fragmentation * 100).toFixed(1)}%`));
        parts.push(heap, residency);
      } else {
        parts.push(el('p', { class: 'error' }, `No heap map: ${p.heap_error || 'unknown'}`));
      }
      this.figures.replaceChildren(...parts);
      if (p.heap && p.heap.notes.length) {
        this.figures.append(el('div', { class: 'quiet' }, p.heap.notes.slice(0, 4).map((n) => el('div', {}, `note: ${n}`))));
      }
    }

    drawHistory(history) {
      const heapColors = Object.fromEntries(this.process.palette.heap.map((e) => [e.name, e.color]));
      const stateColor = { live: heapColors['live 8/8'] };
      for (const s of STATES.slice(1)) stateColor[s] = heapColors[s];
      const resident = PARTS.map(([key, name, color]) => ({ name, color, values: history.resident[key] }));
      const heap = STATES.map((s) => ({ name: s, color: stateColor[s], values: history.heap[s] }));
      this.charts.replaceChildren(
        el('div', { class: 'quiet' }, 'resident memory by part'),
        chart('chart-resident', history.t, resident),
        legend(PARTS.map(([, name, color]) => [name, color])),
        el('div', { class: 'quiet' }, 'heap by state'),
        chart('chart-heap', history.t, heap),
        legend(heap.map((s) => [s.name, s.color])));
    }

    // Every heap at one scale, each showing ROWS rows of WIDTH pixels from its own address.
    async drawHeap(process) {
      if (!process.heap) {
        this.heap.replaceChildren(el('p', { class: 'quiet' }, 'No heap map.'));
        return;
      }
      const segments = process.segments;
      const largest = Math.max(...segments.map((s) => s.end - s.start), 1);
      const fit = pow2Scale(largest / (WIDTH * ROWS));
      if (this.scale === null) this.scale = fit;
      if (REPORT) this.scale = Math.max(this.scale, finestReportScale());
      this.palette = Object.fromEntries(process.palette.heap.map((e) => [e.glyph, e]));
      if (!this.controls) {
        this.scaleLabel = el('span', { class: 'quiet', id: 'scale' });
        this.controls = el('div', { class: 'controls' },
          el('button', { id: 'zoom-in', title: 'halve the bytes per pixel', onclick: () => this.zoom(0.5) }, 'zoom in'),
          el('button', { id: 'zoom-out', title: 'double the bytes per pixel', onclick: () => this.zoom(2) }, 'zoom out'),
          el('button', { id: 'zoom-reset', onclick: () => { this.scale = null; this.froms.clear(); this.redrawHeap(); } }, 'whole heaps'),
          this.scaleLabel,
          el('span', { class: 'quiet' }, 'wheel: scroll · ctrl+wheel: zoom at the cursor · hover: what lies there'));
        this.legendBox = el('div');
        this.segmentsBox = el('div');
      }
      this.legendBox.replaceChildren(legend(process.palette.heap.filter((e) => e.name !== 'live' && !/^live [2357]\//.test(e.name)).map((e) => [e.name, e.color])));
      this.scaleLabel.textContent = `one pixel = ${bytes(this.scale)}`;
      const boxes = [];
      for (const segment of segments) {
        const from = this.clampFrom(segment, this.froms.get(segment.index) ?? segment.start);
        this.froms.set(segment.index, from);
        const to = Math.min(segment.end, from + WIDTH * ROWS * this.scale);
        let answer;
        try {
          answer = await api('heap-map', { pid: this.pid, segment: segment.index, from, to, scale: this.scale });
        } catch (e) {
          if (!(e instanceof NotInReport)) throw e;
          boxes.push(el('p', { class: 'quiet' }, e.message));
          continue;
        }
        const shown = answer.segments[0];
        boxes.push(this.segmentBox(segment, shown, answer.scale));
      }
      this.segmentsBox.replaceChildren(...boxes);
      this.heap.replaceChildren(this.controls, this.legendBox, this.segmentsBox);
    }

    clampFrom(segment, from) {
      const rowBytes = WIDTH * this.scale;
      const aligned = segment.start + Math.floor((from - segment.start) / rowBytes) * rowBytes;
      const last = segment.start + Math.max(0, Math.ceil((segment.end - segment.start) / rowBytes) - ROWS) * rowBytes;
      return Math.max(segment.start, Math.min(aligned, last));
    }

    segmentBox(segment, shown, scale) {
      const rows = Math.max(1, Math.ceil(shown.pixels.length / WIDTH));
      const canvas = el('canvas', {
        class: 'heap-canvas', width: WIDTH, height: rows, 'data-segment': segment.index,
        'data-from': shown.from, 'data-to': shown.to, 'data-scale': scale, 'data-width': WIDTH,
      });
      const image = canvas.getContext('2d').createImageData(WIDTH, rows);
      const rgb = {};
      for (const [glyph, entry] of Object.entries(this.palette)) rgb[glyph] = parseColor(entry.color);
      for (let i = 0; i < shown.pixels.length; i += 1) {
        const c = rgb[shown.pixels[i]] || [255, 0, 255];
        image.data.set([c[0], c[1], c[2], 255], i * 4);
      }
      canvas.getContext('2d').putImageData(image, 0, 0);
      canvas.addEventListener('mousemove', (event) => this.hover(event, canvas, shown, scale));
      canvas.addEventListener('mouseleave', () => { tooltip.hidden = true; });
      canvas.addEventListener('wheel', (event) => this.wheel(event, segment, canvas, scale), { passive: false });
      const arena = segment.main ? 'main arena' : `arena ${segment.arena} (${hex(segment.arena_address)})`;
      const title = `${hex(segment.start)}–${hex(segment.end)} · ${arena} · ${bytes(segment.end - segment.start)} · showing ${hex(shown.from)}–${hex(shown.to)}`;
      return el('div', { class: 'segment' }, el('div', { class: 'title' }, title), canvas);
    }

    pixelAddress(event, canvas, shown, scale) {
      const box = canvas.getBoundingClientRect();
      const x = Math.floor(((event.clientX - box.left) / box.width) * WIDTH);
      const y = Math.floor(((event.clientY - box.top) / box.height) * canvas.height);
      const index = y * WIDTH + x;
      if (x < 0 || x >= WIDTH || index >= shown.pixels.length) return null;
      return { index, address: shown.from + index * scale };
    }

    hover(event, canvas, shown, scale) {
      const at = this.pixelAddress(event, canvas, shown, scale);
      if (!at) { tooltip.hidden = true; return; }
      const entry = this.palette[shown.pixels[at.index]];
      placeTooltip(event);
      const lines = [`${hex(at.address)}–${hex(at.address + scale)}  (${bytes(scale)})`, `pixel: ${entry ? entry.name : '?'}`];
      tooltip.dataset.address = at.address;
      tooltip.dataset.pixel = entry ? entry.name : '';
      delete tooltip.dataset.chunkState;
      delete tooltip.dataset.chunk;
      tooltip.textContent = lines.join('\n');
      if (REPORT) return;
      const asked = at.address;
      this.hovered = asked;
      api('heap-map/at', { pid: this.pid, address: asked, scale }).then((what) => {
        if (this.hovered !== asked || tooltip.hidden) return;
        const states = Object.entries(what.states).map(([s, b]) => `${s} ${bytes(b)}`).join(', ');
        lines.push(`states: ${states}`);
        lines.push(`pages: ${what.resident_pages} of ${what.pages} resident`);
        lines.push(`chunk: ${hex(what.chunk.address)}, ${bytes(what.chunk.bytes)}, ${what.chunk.state} (user pointer ${hex(what.chunk.user_pointer)})`);
        if (what.site) {
          lines.push(`site (sampled): ${bytes(what.site.inuse_bytes)} live`);
          for (const frame of what.site.frames.slice(0, 8)) lines.push(`  ${frameName(frame)}`);
        }
        tooltip.dataset.chunkState = what.chunk.state;
        tooltip.dataset.chunk = what.chunk.address;
        tooltip.textContent = lines.join('\n');
      }).catch((e) => { tooltip.textContent = lines.concat([e.message]).join('\n'); });
    }

    wheel(event, segment, canvas, scale) {
      event.preventDefault();
      if (event.ctrlKey || event.shiftKey) {
        const at = this.pixelAddress(event, canvas, { from: Number(canvas.dataset.from), pixels: { length: Infinity } }, scale);
        this.zoom(event.deltaY < 0 ? 0.5 : 2, at && at.address, segment);
        return;
      }
      const rows = Math.sign(event.deltaY) * 8;
      this.froms.set(segment.index, this.clampFrom(segment, this.froms.get(segment.index) + rows * WIDTH * scale));
      this.redrawHeap();
    }

    zoom(factor, around = null, segment = null) {
      const next = Math.max(GRANULE, this.scale * factor);
      if (next === this.scale) return;
      this.scale = next;
      if (around !== null && segment) this.froms.set(segment.index, around - (WIDTH * ROWS * next) / 2);
      this.redrawHeap();
    }

    redrawHeap() {
      this.drawHeap(this.process).catch((e) => say(e.message, true));
    }

    async drawSites(process) {
      if (!process.sites) {
        this.sites.replaceChildren(el('p', { class: 'quiet' }, `No allocation stacks in ${process.mode} mode: they come with serve --live (and profile --format html).`));
        return;
      }
      const sites = await api('sites', { pid: this.pid });
      sites.taken = process.taken;
      if (!this.baseline) this.baseline = sites;
      this.current = sites;
      if (!this.siteControls) {
        const button = (measure, text) => el('button', { 'data-measure': measure, onclick: () => { this.measure = measure; this.drawFlame(); } }, text);
        this.siteControls = el('div', { class: 'controls' },
          button('inuse_bytes', 'inuse_space'), button('pinned_bytes', 'pinned_space'), button('growth', 'growth since the baseline'),
          el('button', { id: 'mark', title: 'compare later samples with this one', onclick: () => { this.baseline = this.current; this.drawFlame(); } }, 'set baseline now'),
          this.baselineLabel = el('span', { class: 'quiet' }));
        this.flame = el('div', { class: 'flame', id: 'flame' });
        this.growth = el('table', { id: 'growth' });
      }
      this.sites.replaceChildren(this.siteControls,
        el('p', { class: 'quiet' }, `${sites.stacks} stacks sampled (one per ${bytes(sites.sample_bytes)} allocated on average; one page in ${sites.pin_pages} watched for pinning), ${sites.missed_stacks} without their stack`),
        this.flame, this.growth);
      this.drawFlame();
    }

    drawFlame() {
      for (const b of this.siteControls.querySelectorAll('button[data-measure]')) b.classList.toggle('on', b.dataset.measure === this.measure);
      this.baselineLabel.textContent = `baseline: ${time(this.baseline.taken)}`;
      const growth = this.measure === 'growth';
      const before = new Map(this.baseline.top.map((s) => [siteKey(s), s.inuse_bytes]));
      const weighted = this.current.top.map((s) => ({
        site: s,
        value: growth ? Math.max(0, s.inuse_bytes - (before.get(siteKey(s)) || 0)) : s[this.measure],
      }));
      if (!growth) {
        const buckets = [['[live before attach]', this.current.before_attach], ['[other sites]', this.current.other],
          ['[stack not copied]', this.current.unknown], ['[no site: malloc\'s own]', this.current.unattributed]];
        for (const [name, figures] of buckets) weighted.push({ bucket: name, value: figures[this.measure] });
      }
      renderFlame(this.flame, weighted.filter((w) => w.value > 0), growth, this.measure);
      const grew = this.current.top.map((s) => ({ s, delta: s.inuse_bytes - (before.get(siteKey(s)) || 0) }))
        .filter((g) => g.delta !== 0).sort((a, b) => b.delta - a.delta).slice(0, 10);
      this.growth.replaceChildren(
        el('tr', {}, el('th', { class: 'text' }, `site (change of live bytes since ${time(this.baseline.taken)})`), el('th', {}, 'change'), el('th', {}, 'live now')),
        grew.length ? grew.map((g) => el('tr', {}, el('td', { class: 'text' }, ownName(g.s)), el('td', { 'data-value': g.delta }, (g.delta > 0 ? '+' : '') + bytes(g.delta)), el('td', {}, bytes(g.s.inuse_bytes))))
          : el('tr', {}, el('td', { class: 'text quiet' }, 'no site changed since the baseline')));
    }

    drawPages(pages, process) {
      const palette = Object.fromEntries(process.palette.pages.map((e) => [e.glyph, e]));
      const rgb = Object.fromEntries(process.palette.pages.map((e) => [e.glyph, parseColor(e.color)]));
      const boxes = pages.mappings.map((m) => {
        const rows = Math.max(1, Math.ceil(m.pixels.length / PAGE_WIDTH));
        const columns = Math.max(1, Math.min(PAGE_WIDTH, m.pixels.length));
        const canvas = el('canvas', { class: 'page-canvas', width: columns, height: rows });
        canvas.style.width = `${columns * PAGE_PIXEL}px`;
        canvas.style.height = `${rows * PAGE_PIXEL}px`;
        const image = canvas.getContext('2d').createImageData(columns, rows);
        for (let i = 0; i < m.pixels.length; i += 1) {
          const c = rgb[m.pixels[i]] || [255, 0, 255];
          image.data.set([c[0], c[1], c[2], 255], i * 4);
        }
        canvas.getContext('2d').putImageData(image, 0, 0);
        canvas.addEventListener('mousemove', (event) => {
          const box = canvas.getBoundingClientRect();
          const index = Math.floor((event.clientY - box.top) * rows / box.height) * columns + Math.floor((event.clientX - box.left) * columns / box.width);
          if (index >= m.pixels.length) { tooltip.hidden = true; return; }
          const address = m.start + index * pages.scale * pages.page_size;
          placeTooltip(event);
          tooltip.textContent = `${hex(address)}–${hex(address + pages.scale * pages.page_size)}\n${m.path || '[anonymous]'} ${m.perms}\n${palette[m.pixels[index]].name}`;
        });
        canvas.addEventListener('mouseleave', () => { tooltip.hidden = true; });
        const resident = m.pages.anon + m.pages.file + m.pages.thp_anon + m.pages.thp_file;
        return el('div', { class: 'mapping' }, el('div', { class: 'title' },
          `${hex(m.start)}–${hex(m.end)} ${m.perms} ${m.path || '[anonymous]'} · ${resident} of ${(m.end - m.start) / pages.page_size} pages resident`), canvas);
      });
      this.pages.replaceChildren(
        el('p', { class: 'quiet' }, `one pixel = ${pages.scale} page${pages.scale > 1 ? 's' : ''} of ${bytes(pages.page_size)} · ${pages.mappings.length} mappings`),
        legend(process.palette.pages.map((e) => [e.name, e.color])), ...boxes);
    }
  }

  // ---- pieces --------------------------------------------------------------------------------
  function pow2Scale(bytesPerPixel) {
    let scale = GRANULE;
    while (scale < bytesPerPixel) scale *= 2;
    return scale;
  }

  function parseColor(css) {
    const n = parseInt(css.slice(1), 16);
    return [(n >> 16) & 255, (n >> 8) & 255, n & 255];
  }

  function placeTooltip(event) {
    tooltip.hidden = false;
    tooltip.style.left = `${Math.min(event.clientX + 14, window.innerWidth - 480)}px`;
    tooltip.style.top = `${event.clientY + 14}px`;
  }

  // A stacked area chart of `series` over `t`; its canvas says how many points it has.
  function chart(id, t, series) {
    const [width, height, pad] = [960, 160, 4];
    const canvas = el('canvas', { id, class: 'chart', width, height, 'data-points': t.length });
    const g = canvas.getContext('2d');
    g.fillStyle = '#101216';
    g.fillRect(0, 0, width, height);
    const totals = t.map((_, i) => series.reduce((sum, s) => sum + (s.values[i] || 0), 0));
    const top = Math.max(...totals, 1);
    const x = (i) => (t.length < 2 ? width / 2 : pad + ((t[i] - t[0]) / (t[t.length - 1] - t[0] || 1)) * (width - 2 * pad));
    const y = (v) => height - pad - (v / top) * (height - 2 * pad - 14);
    const below = t.map(() => 0);
    for (const s of series) {
      const above = below.map((b, i) => b + (s.values[i] || 0));
      g.fillStyle = s.color;
      if (t.length < 2) {
        g.fillRect(width / 2 - 6, y(above[0]), 12, y(below[0]) - y(above[0]));
      } else {
        g.beginPath();
        g.moveTo(x(0), y(above[0]));
        for (let i = 1; i < t.length; i += 1) g.lineTo(x(i), y(above[i]));
        for (let i = t.length - 1; i >= 0; i -= 1) g.lineTo(x(i), y(below[i]));
        g.closePath();
        g.fill();
      }
      above.forEach((v, i) => { below[i] = v; });
    }
    g.fillStyle = '#9aa0a8';
    g.font = '11px sans-serif';
    g.fillText(`${bytes(top)}${t.length ? ` · ${time(t[0])} – ${time(t[t.length - 1])} · ${t.length} samples` : ''}`, pad + 2, 12);
    return canvas;
  }

  function lineName(line) { return line.function; }
  function frameName(frame) {
    if (frame.lines.length) return frame.lines.map(lineName).join(' ← ');
    const module = frame.module ? frame.module.split('/').pop() : '?';
    return `${module}+${hex(frame.file_offset)}`;
  }
  // A site's frames root first, an inlined function as a frame of its own.
  function rootFirst(site) {
    const names = [];
    for (const frame of [...site.frames].reverse()) {
      if (frame.lines.length) for (const line of [...frame.lines].reverse()) names.push(lineName(line));
      else names.push(frameName(frame));
    }
    if (site.truncated) names.unshift('[truncated]');
    return names;
  }
  const siteKey = (site) => site.frames.map((f) => f.address).join(',');
  function ownName(site) {
    const names = rootFirst(site);
    return names.slice(-3).join(' › ') || '?';
  }

  // An icicle graph (root on top) of the sites' stacks weighted by `value`; a click zooms.
  function renderFlame(box, weighted, growth, measure) {
    const root = { name: 'all', value: 0, children: new Map() };
    for (const w of weighted) {
      root.value += w.value;
      let node = root;
      const path = w.bucket ? [w.bucket] : rootFirst(w.site);
      for (const name of path) {
        if (!node.children.has(name)) node.children.set(name, { name, value: 0, children: new Map(), bucket: !!w.bucket });
        node = node.children.get(name);
        node.value += w.value;
      }
    }
    const rowHeight = 18;
    let depth = 0;
    const draw = (top) => {
      box.replaceChildren();
      depth = 0;
      const place = (node, left, width, level) => {
        if (width < 0.002 || node.value <= 0) return;
        depth = Math.max(depth, level + 1);
        const share = (100 * node.value) / top.value;
        const div = el('div', {
          class: node === top ? 'node' : node.bucket ? 'bucket' : growth ? 'grew' : 'node',
          title: `${node.name}\n${bytes(node.value)} (${share.toFixed(1)}% of ${growth ? 'the growth' : measure === 'inuse_bytes' ? 'inuse_space' : 'pinned_space'})`,
          'data-name': node.name, 'data-value': Math.round(node.value),
          onclick: () => draw(node === top ? root : node),
        }, `${node.name} ${bytes(node.value)}`);
        div.style.left = `${left * 100}%`;
        div.style.width = `${width * 100}%`;
        div.style.top = `${level * rowHeight}px`;
        box.append(div);
        let at = left;
        for (const child of [...node.children.values()].sort((a, b) => b.value - a.value)) {
          const w = (width * child.value) / node.value;
          place(child, at, w, level + 1);
          at += w;
        }
      };
      place(top, 0, 1, 0);
      box.style.height = `${Math.max(1, depth) * rowHeight + 4}px`;
      if (top.value <= 0) box.replaceChildren(el('p', { class: 'quiet' }, growth ? 'Nothing grew since the baseline.' : 'Nothing to show.'));
    };
    draw(root);
  }

  window.addEventListener('hashchange', () => { show(); });
  show();
})();
