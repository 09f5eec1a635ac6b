"""SegNet/ENet's data layer: DenseImageData (images with per-pixel label maps)."""
import os

import numpy as np

from ..errors import LayerError, NetrunError, check
from .base import Layer, register
from .data import (DataTransformer, SOURCE_HINT, check_batch, chw, ctx_limit, read_list,
                   resolve_path, stack_items, start_list)


def resize_nearest(img, height, width):
    """(H, W, C) -> (height, width, C), OpenCV's INTER_NEAREST: source index
    floor(i * in / out)."""
    h, w = img.shape[:2]
    rows = np.minimum((np.arange(height) * (h / height)).astype(np.int64), h - 1)
    cols = np.minimum((np.arange(width) * (w / width)).astype(np.int64), w - 1)
    return img[rows[:, None], cols[None, :]]


@register("DenseImageData")
class DenseImageData(Layer):
    """SegNet/ENet's images + label maps (dense_image_data_param): ``source`` lists
    ``image label_image`` a line (``root_folder`` prefixed to both).  Per item: the image
    (BGR, or gray without ``is_color``) and the label image (gray) are read, resized to
    new_height x new_width when given (image INTER_LINEAR, labels INTER_NEAREST), both
    mirrored with ``mirror`` (probability 1/2) and cropped at the same random offset
    with crop_height x crop_width; then the image goes through transform_param (whose
    own crop_size and mirror the fork refuses, as they would move image and labels
    apart) and the label map is copied as it is.
    Tops: data (N, C, H, W) and label (N, 1, H, W).  ``shuffle`` permutes the list at
    setup and after every pass; ``rand_skip`` skips a random number of lines at setup.
    ENet's ``label_divide_factor`` other than 1 is refused.
    """
    exact_bottoms = 0
    exact_tops = 2

    def setup(self, bottom, top):
        p = self.param.dense_image_data_param
        self.batch_size = check_batch(p.batch_size, "dense_image_data_param")
        check((p.new_height == 0) == (p.new_width == 0),
              "dense_image_data_param: give new_height and new_width together")
        check((p.crop_height == 0) == (p.crop_width == 0),
              "dense_image_data_param: give crop_height and crop_width together")
        check(p.label_divide_factor == 1, "dense_image_data_param.label_divide_factor "
                                          f"{p.label_divide_factor} is not supported (only 1)")
        tp = self.param.transform_param
        check(not tp.mirror and not tp.crop_size,
              "DenseImageData: transform_param mirror/crop_size would transform the image "
              "and not its labels: use dense_image_data_param mirror/crop_height/crop_width")
        self.new_hw = (p.new_height, p.new_width) if p.new_height else None
        self.crop = (p.crop_height, p.crop_width) if p.crop_height else None
        self.mirror = bool(p.mirror)
        self.color = bool(p.is_color)
        self.transformer = DataTransformer(tp, self.phase, self.ctx, self.dtype)
        source = resolve_path(p.source, self.ctx, "dense_image_data_param.source",
                              hint=SOURCE_HINT)
        self.list_dir = os.path.dirname(source)
        lines = []
        for num, line in enumerate(read_list(source, "image list", ctx_limit(self.ctx)), 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 2:
                raise LayerError(f'{source}:{num}: expected "image label_image", got "{line}"')
            lines.append((p.root_folder + parts[0], p.root_folder + parts[1]))
        start_list(self, lines, source, p.shuffle, p.rand_skip)
        img, lab = self._read(self.order[self.pos], random=False)
        top[0].reshape((self.batch_size,) + img.shape)
        top[1].reshape((self.batch_size,) + lab.shape)

    def _load(self, path, color):
        from ..io.images import read_image
        try:
            return read_image(resolve_path(path, self.ctx, "image", (self.list_dir,)),
                              color=color, limit=ctx_limit(self.ctx), input_hw=self.new_hw)
        except NetrunError as e:
            raise LayerError(f"could not load image: {e}") from None

    def _read(self, i, random=True):
        from ..io.images import resize_linear
        img_path, lab_path = self.lines[i]
        img, lab = self._load(img_path, self.color), self._load(lab_path, False)
        if self.new_hw:
            img = resize_linear(img, *self.new_hw)
            lab = resize_nearest(lab, *self.new_hw)
        if img.shape[:2] != lab.shape[:2]:
            raise LayerError(f"{img_path} is {img.shape[0]}x{img.shape[1]} but its labels "
                             f"{lab_path} are {lab.shape[0]}x{lab.shape[1]}")
        rng = self.ctx.rng
        if random and self.mirror and rng.integers(0, 2):
            img, lab = img[:, ::-1], lab[:, ::-1]
        if self.crop:
            ch, cw = self.crop
            h, w = img.shape[:2]
            check(h >= ch and w >= cw, f"crop {ch}x{cw} is larger than the {h}x{w} image")
            y0 = int(rng.integers(0, h - ch + 1)) if random else 0
            x0 = int(rng.integers(0, w - cw + 1)) if random else 0
            img, lab = img[y0:y0 + ch, x0:x0 + cw], lab[y0:y0 + ch, x0:x0 + cw]
        return chw(img), chw(lab)

    def reshape(self, bottom, top):
        pass

    def forward(self, bottom, top):
        imgs, labs = [], []
        for _ in range(self.batch_size):
            img, lab = self._read(self.order[self.pos])
            imgs.append(img)
            labs.append(lab)
            self.pos += 1
            if self.pos >= len(self.lines):
                self.pos = 0
                if self.shuffle:
                    self.ctx.rng.shuffle(self.order)
        x = self.transformer(stack_items(imgs, "image"))
        top[0].reshape(x.shape)
        top[0].data[...] = x
        lab = stack_items(labs, "label map")
        top[1].reshape(lab.shape)
        top[1].data[...] = lab
