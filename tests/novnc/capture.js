// Opens noVNC (vnc_lite.html, served by websockify) in Debian's headless
// Chromium, waits until its canvas is WIDTH x HEIGHT and not blank, then
// writes the canvas as raw RGB to OUT and a screenshot of the page to
// OUT.png. Usage: node capture.js URL WIDTH HEIGHT OUT
const { chromium } = require('playwright-core');
const fs = require('fs');

(async () => {
  const [url, width, height, out] = process.argv.slice(2);
  const browser = await chromium.launch({
    executablePath: '/usr/bin/chromium',
    args: ['--no-sandbox', '--disable-gpu'],
  });
  try {
    const page = await browser.newPage({ viewport: { width: 1024, height: 800 } });
    await page.goto(url);
    // noVNC draws as updates arrive: wait for the mode and a lit pixel
    // in the last row (the whole first update is in).
    await page.waitForFunction(([w, h]) => {
      const c = document.querySelector('#screen canvas');
      if (!c || c.width !== w || c.height !== h) return false;
      const row = c.getContext('2d').getImageData(0, h - 1, w, 1).data;
      return row.some((v, i) => i % 4 !== 3 && v !== 0);
    }, [Number(width), Number(height)], { timeout: 30000 });
    const rgba = await page.evaluate(() => {
      const c = document.querySelector('#screen canvas');
      return Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data);
    });
    const rgb = Buffer.alloc((rgba.length / 4) * 3);
    for (let i = 0, j = 0; i < rgba.length; i += 4, j += 3) {
      rgb[j] = rgba[i];
      rgb[j + 1] = rgba[i + 1];
      rgb[j + 2] = rgba[i + 2];
    }
    fs.writeFileSync(out, rgb);
    await page.screenshot({ path: out + '.png' });
    console.log('captured');
  } finally {
    await browser.close();
  }
})().catch((e) => {
  console.error(e);
  process.exit(1);
});
