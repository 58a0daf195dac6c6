"""Long Mandarin text as a recording transcribes it with no punctuation model (one clause, one character
per word): numbers, dates, money and percentages at the rate news and lectures have them, and the
everyday words that only contain a numeral (一起, 一般, 统一, 星期一), which ITN must leave alone."""

from __future__ import annotations

import random
import re

from workers.engines.base import Word

_DIGITS = dict(zip("零一二三四五六七八九", "0123456789"))

MANDARIN_SENTENCES = [
    "甚至出现交易几乎停滞的情况",
    "广州市房地产中介协会分析认为市场还需要一段时间消化库存",
    "我想问我在滨海新区有房子的话能不能落户",
    "今年前三个季度全国居民人均可支配收入达到两万九千三百九十八元",
    "比上年同期名义增长百分之六点三",
    "会议定于二零二四年五月十二日上午九点半在市政府三楼会议室召开",
    "我们一起去看看这个项目的进展情况",
    "这家公司去年的营业收入是三百二十亿元净利润下降了百分之十五",
    "星期一早上大家统一在门口集合然后一起出发",
    "一般来说这种病需要休息一到两个星期",
    "他花了三千五百块钱买了一台旧电脑",
    "截至六月底全市共有常住人口一千二百六十万人",
    "老师让同学们把第三章的练习做完明天交上来",
    "这条高速公路全长一百八十七公里设计时速一百二十公里",
    "我们的目标是在未来五年内把碳排放减少三分之一",
    "这个问题很复杂需要我们仔细研究之后再做决定",
    "请大家把手机调成静音模式会议马上就要开始了",
    "下午三点二十分有一趟去北京的高铁",
    "据统计今年春节假期全国国内旅游出游四点七四亿人次",
    "这座桥始建于一九五八年至今已经有六十多年的历史",
    "孩子们在操场上跑来跑去玩得非常开心",
    "一点一滴的积累才能换来最后的成功",
    "他说自己每天早上六点起床先跑五公里再去上班",
    "这次考试的平均分是七十八点五分比上次提高了三分",
    "医院提醒市民注意防暑降温多喝水少出门",
    "从这里到机场大概需要四十分钟如果堵车的话可能要一个小时",
    "新的政策将从下个月一号开始正式实施",
    "工厂一共生产了两万三千四百件产品合格率达到百分之九十九",
    "你先别着急我们慢慢把事情说清楚",
    "这本书一共有十二章每一章都讲了一个不同的故事",
    "研究人员发现这种材料在零下四十度的环境中依然能够正常工作",
    "爷爷今年八十五岁了身体还是很硬朗",
    "随着经济的发展人们的生活水平不断提高",
    "第二十三届冬季奥运会在韩国平昌举行",
    "我们公司在上海北京和深圳都有办公室",
    "这台机器每小时可以处理大约五百个包裹",
    "他把这件事情的来龙去脉讲得清清楚楚",
    "今年的粮食总产量预计超过一万三千亿斤",
    "大家不要随便丢垃圾要注意保护环境",
    "这个月的电费比上个月多了八十多块钱",
]


def mandarin_words(n_chars: int, seed: int = 0, step_s: float = 0.2) -> list[Word]:
    """``n_chars`` characters of the sentences above, joined in a seeded order, one word each."""
    rng = random.Random(seed)
    parts: list[str] = []
    size = 0
    while size < n_chars:
        parts.append(rng.choice(MANDARIN_SENTENCES))
        size += len(parts[-1])
    text = "".join(parts)[:n_chars]
    return [Word(round(i * step_s, 3), round(i * step_s + 0.15, 3), c) for i, c in enumerate(text)]


def numerals_as_digits(text: str) -> str:
    """A stand-in for the ITN grammar, as cheap as a regex (the real one costs about 1 ms a character):
    every run of numerals rewritten to digits, so an aligner has rewritten spans to find all along."""
    return re.sub(r"[零〇一二三四五六七八九十百千万亿两]+", lambda m: "".join(_DIGITS.get(c, "0") for c in m[0]), text)
