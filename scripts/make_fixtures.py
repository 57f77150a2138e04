#!/usr/bin/env python3
"""Build tiny seq2seq checkpoints and record reference outputs for parity tests.

What it makes (from the repository root), per family:

  marian  (Helsinki-NLP/opus-mt-* layout; English -> Russian / Hindi)
    tests/fixtures/marian/tiny-en-ru/   opus-mt-like checkpoint: swish, scaled embeddings
    tests/fixtures/marian/tiny-en-hi/   deliberately different config; pytorch_model.bin too
        config.json  generation_config.json  model.safetensors       (as save_pretrained writes them)
        source.spm  target.spm  vocab.json  tokenizer_config.json    (MarianTokenizer files)

  bart  (summarization: a news paragraph -> its first sentence)
    tests/fixtures/bart/tiny-cnn/       facebook/bart-large-cnn-like: gelu, unscaled embeddings,
        2+2 layers, 128 positions (so long inputs need chunking), tied embeddings, trained
        final_logits_bias, generation_config.json with bart-large-cnn's kind of settings
        (beam 4, length_penalty 2, min/max_length, no_repeat_ngram 3, early_stopping, forced
        BOS 0 / EOS 2); byte-level BPE as tokenizer.json AND vocab.json + merges.txt
        (+ tokenizer_config.json, special_tokens_map.json); model.safetensors
    tests/fixtures/bart/tiny-distil/    sshleifer/distilbart-cnn-12-6-like: 3 encoder / 1 decoder
        layers, relu, scaled embeddings, narrower; NO generation_config.json: its summarization
        settings live only in config.json task_specific_params (which transformers 5 ignores)
        beside the legacy force_bos_token_to_be_generated (which it honours); vocab.json +
        merges.txt only; pytorch_model.bin only

  t5  (the same task, inputs prefixed "summarize: ")
    tests/fixtures/t5/tiny-flan/        google/flan-t5-like: gated-gelu, untied lm_head (no output
        scaling), inner dim (heads * d_kv) != d_model, 32 buckets / max_distance 128, 8 sentinels,
        vocab_size padded past the tokenizer, spiece.model (small custom normalization table)
        + tokenizer.json + tokenizer_config.json (model_max_length 96) + special_tokens_map.json
    tests/fixtures/t5/tiny-t5/          google-t5/t5-small-like: relu, tied embeddings (decoder
        output scaled by d_model**-0.5), 16 buckets / max_distance 32 with inputs longer than
        that, 3 encoder / 2 decoder layers, task_specific_params in config.json, spiece.model
        only (nmt_nfkc, 100 sentinels by default)

  m2m100  (many-to-many translators; English, Russian and Hindi in every direction)
    tests/fixtures/m2m100/tiny-nllb/    facebook/nllb-200-*-like: pre-norm, relu, scaled embeddings,
        sentencepiece.bpe.model (BPE) + tokenizer.json + tokenizer_config.json as NllbTokenizer
        saves them (202 FLORES-200 codes, <mask> last); NLLB's generation_config.json;
        pytorch_model.bin too
    tests/fixtures/m2m100/tiny-m2m100/  facebook/m2m100_*-like: gelu, 3 encoder / 1 decoder layers,
        vocab.json (some pieces left out) + sentencepiece.bpe.model + tokenizer_config.json
        (M2M100Tokenizer); 5 beams with early stopping; pytorch_model.bin too

  madlad  (google/madlad400-*-mt: T5 translating `<2xx> text` into the language xx)
    tests/fixtures/madlad/tiny-madlad/  gated-gelu, untied lm_head (config.json says
        tie_word_embeddings false, as MADLAD's), spiece.model (unigram, T5's ids, <2en> <2ru> <2hi>
        <2de> <2fr> <2es> <2uk> <2bn> as user-defined pieces) + tokenizer.json +
        tokenizer_config.json as T5Tokenizer saves them (the tags become added tokens)
    tests/fixtures/madlad/tiny-madlad-wide/  tiny-madlad's tokenizer (not copied) on a model whose
        rows are whole 256-value blocks (d_model 256, d_ff 512), stored in f16: what
        tests/madlad_gguf.rs quantizes to Q4_K, Q6_K and Q8_0 GGUF files

  and in every directory
    reference.json   what Python `transformers` does with exactly these files

Why: Marian, BART and T5 weights cannot be downloaded here, so the Rust
implementations are proven by parity with the reference implementation
(Python `transformers`) on small checkpoints of the same architectures and
the same file layouts as the Hugging Face hub repositories. The checkpoints
are trained for a few hundred steps on the small corpus below (written for
these fixtures), so their logits are not flat and their greedy and beam
outputs differ in interesting ways; they are neither translators nor
summarizers.

How to run it (the virtualenv lives outside the repository; PyPI only):

    python3 -m venv ~/.cache/precis/fixtures-venv
    ~/.cache/precis/fixtures-venv/bin/pip install transformers==5.24.0 torch sentencepiece safetensors protobuf
    ~/.cache/precis/fixtures-venv/bin/python scripts/make_fixtures.py            # every family
    ~/.cache/precis/fixtures-venv/bin/python scripts/make_fixtures.py marian     # one family
    ~/.cache/precis/fixtures-venv/bin/python scripts/make_fixtures.py bart t5    # some

(protobuf: transformers reads spiece.model through it; the t5 references
record its version.) It refuses to run with another `transformers` version
(the references are that version's behaviour), works offline
(`HF_HUB_OFFLINE=1`), runs torch on one CPU thread with fixed seeds and
deterministic algorithms, and rewrites its output directories from scratch:
on the same machine two runs produce byte-identical files. (Another CPU may
round differently during training and so produce other weights;
`reference.json` records the sha256 of every file it was computed from, so a
test can tell.)

Layout of reference.json (ids are ints, floats are float32 values written as
the float64 equal to them, so f64 parse + cast to f32 is exact; a tensor is
{"shape": [..], "data": [flat row-major list]}). Marian:

    format, generator          "precis marian reference v1", this script
    versions                   {python, transformers, torch, tokenizers, sentencepiece, safetensors, numpy}
    files                      {file name: sha256} of the checkpoint files used
    checkpoint                 {vocab_size, pad_token_id, eos_token_id, unk_token_id,
                                decoder_start_token_id, spm_pieces: {source, target},
                                excluded_pieces, language_codes, safetensors_tensors,
                                attn_implementation, train_loss: [[step, loss]]}
    tokenization.source[]      {text, note, pieces, input_ids, attention_mask}  tokenizer(text)
    tokenization.target[]      {text, note, pieces, labels}            tokenizer(text_target=text)
    decoding.cases[]           {note, ids, text, text_keep_special, text_target_spm, tokens}
                               text = decode(ids, skip_special_tokens=True); _keep_special:
                               skip_special_tokens=False; _target_spm: use_source_tokenizer=False
    decoding.batch_decode      batch_decode([case.ids...], skip_special_tokens=True)
    forward                    {sources, input_ids [B][L], attention_mask [B][L] (right-padded),
                                encoder_last_hidden_state (tensor [B, L, d_model]),
                                decoder_input_ids [B][2] (start token, greedy's first token),
                                decoder_logits (tensor [B, 2, vocab])}
    generation[]               {name, kwargs (passed to generate on top of the checkpoint's
                                generation config; null means "set to None"),
                                resolved (the parameters generate() ended up with;
                                effective_max_length counts the start token),
                                sequences [B][T] (start token first, then as returned: after eos,
                                pad in greedy search, `pad_token_id or eos_token_id` in beam search),
                                text [B] (batch_decode, skip_special_tokens=True),
                                sequences_scores [B] (beam only),
                                greedy_margins [B][steps], min_greedy_margin (num_beams == 1 only;
                                top-1 minus top-2 processed score per generated token, null if
                                only one token was allowed), alone_equals_batched [B],
                                alone_sequences [B][..] (only where a row alone differed)}

BART and T5 ("precis bart reference v1", "precis t5 reference v1"): the same
keys where the same things exist, and

    versions                   + protobuf (t5)
    checkpoint                 {like, model_type, vocab_size (model rows), tokenizer_size,
                                pad/eos/unk/bos_token_id, decoder_start_token_id,
                                forced_bos_token_id, forced_eos_token_id (as generate() resolves
                                them by default), weights (file name), safetensors_tensors or
                                pytorch_model_tensors, attn_implementation, train_loss}
    notes[]                    what this transformers version does that a reimplementation must
                               copy (task_specific_params, tokenizer and padding quirks)
    tokenization               {tokenizer_class, tokenizer_files, model_max_length (null: none),
                                add_prefix_space, source[] as Marian's (AutoTokenizer on the
                                directory), alternative_loads[] {files, tokenizer_class,
                                same_as_directory, differences[] {text, pieces, input_ids}}
                                (tiny-cnn: vocab.json + merges.txt only; tiny-flan: without
                                tokenizer.json)}
    decoding                   {clean_up_tokenization_spaces, cases[] {note, ids, text,
                                text_keep_special, tokens (null for ids past the tokenizer)},
                                batch_decode}
    forward                    as Marian's, + prefix ("summarize: " for T5, "" for BART):
                                input_ids = tokenizer([prefix + source for source in sources])
    generation[]               as Marian's; task_specific_params_summarization (tiny-distil,
                                tiny-t5) passes config.json's summarization entry, less prefix,
                                as kwargs: what transformers 4.x's summarization pipeline did

M2M100 ("precis m2m100 reference v1"): Marian's keys, and

    checkpoint                 + tokenizer ("nllb" or "m2m100"), tokenizer_size, language_ids
                                {en, ru, hi: id of the language token}
    tokenization               {tokenizer_class, source[] (+ src_lang: the ISO code the
                                tokenizer's src_lang was set for), target[] {tgt_lang, text,
                                labels}, legacy_behaviour[] (NLLB: legacy_behaviour=True,
                                src_lang rus_Cyrl)}
    forward                    decoder_input_ids [B][3]: start, the forced Russian token,
                                greedy's first word
    generation[]               every setting with forced_bos_token_id (Russian unless the name
                                says otherwise; checkpoint_defaults_no_forced_language has none)
    from_ru                    {forward {sources, src_lang, input_ids, attention_mask},
                                generation[]}: Russian sources into English and Hindi

MADLAD ("precis madlad reference v1"): Marian's keys, and

    checkpoint                 + tokenizer_size, language_ids {code: id of <2code>}
    tokenization.source[]      {text, note, target, input ("<2target> text"), pieces, input_ids}
    forward                    the batch into Russian (prefix "<2ru> ")
    to_hi, from_ru             {forward {sources, prefix, input_ids, attention_mask},
                                generation[]}: the batch into Hindi, Russian sources into English

Adding a family: write `make_<family>(versions)` returning the checkpoint
directories it wrote, reusing `train_seq2seq`, `training_batches`,
`greedy_and_forward`, `record_generation`, `common_generation_settings`,
`source_tokenization`, `decoding_case`, `tensor`, `write_json`, and register
it in FAMILIES.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import random
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
# Deterministic float reductions on CPU.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

PINNED_TRANSFORMERS = "5.24.0"
REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "tests" / "fixtures"
SEED = 20240611


def check_versions() -> dict:
    """Refuse another transformers version; return the versions to record."""
    import importlib.metadata as md

    have = md.version("transformers")
    if have != PINNED_TRANSFORMERS:
        sys.exit(
            f"make_fixtures.py: transformers {have} is installed, but the references are pinned to "
            f"{PINNED_TRANSFORMERS}; install transformers=={PINNED_TRANSFORMERS} in the virtualenv."
        )
    versions = {"python": ".".join(map(str, sys.version_info[:3]))}
    for name in ["transformers", "torch", "tokenizers", "sentencepiece", "safetensors", "numpy"]:
        versions[name] = md.version(name)
    return versions


# ---------------------------------------------------------------------------
# Parallel corpus: (English, Russian, Hindi). Written for these fixtures;
# translations are close but not professional.
# ---------------------------------------------------------------------------
CORPUS = [
    ("The minister arrived in Delhi on Monday.", "Министр прибыл в Дели в понедельник.", "मंत्री सोमवार को दिल्ली पहुंचे।"),
    ("Antony J. Blinken met the foreign minister of India.", "Энтони Дж. Блинкен встретился с министром иностранных дел Индии.", "एंटनी जे. ब्लिंकन ने भारत के विदेश मंत्री से मुलाकात की।"),
    ("The U.S. economy grew by 2.4 percent last year.", "Экономика США выросла на 2,4 процента в прошлом году.", "पिछले साल अमेरिकी अर्थव्यवस्था 2.4 प्रतिशत बढ़ी।"),
    ("Prices rose for the third month in a row.", "Цены росли третий месяц подряд.", "कीमतें लगातार तीसरे महीने बढ़ीं।"),
    ('"We will not stop," the president said.', "«Мы не остановимся», — сказал президент.", '"हम नहीं रुकेंगे," राष्ट्रपति ने कहा।'),
    ("The talks will continue on Friday.", "Переговоры продолжатся в пятницу.", "बातचीत शुक्रवार को जारी रहेगी।"),
    ("More than 300 people were evacuated.", "Более 300 человек были эвакуированы.", "300 से अधिक लोगों को निकाला गया।"),
    ("The central bank kept its key rate at 7.5%.", "Центральный банк сохранил ключевую ставку на уровне 7,5%.", "केंद्रीय बैंक ने प्रमुख दर 7.5% पर बरकरार रखी।"),
    ("Heavy rain hit the city on Tuesday.", "Во вторник на город обрушился сильный дождь.", "मंगलवार को शहर में भारी बारिश हुई।"),
    ("The company reported a profit of $1.2 billion.", "Компания сообщила о прибыли в размере 1,2 миллиарда долларов.", "कंपनी ने 1.2 अरब डॉलर का मुनाफा दर्ज किया।"),
    ("Police said two men were arrested.", "Полиция сообщила, что были задержаны двое мужчин.", "पुलिस ने कहा कि दो लोगों को गिरफ्तार किया गया।"),
    ("The election will be held in May.", "Выборы пройдут в мае.", "चुनाव मई में होंगे।"),
    ("Schools will reopen next week.", "Школы вновь откроются на следующей неделе.", "स्कूल अगले सप्ताह फिर से खुलेंगे।"),
    ("The U.N. called for a ceasefire.", "ООН призвала к прекращению огня.", "संयुक्त राष्ट्र ने युद्धविराम का आह्वान किया।"),
    ("The meeting lasted three hours.", "Встреча продолжалась три часа.", "बैठक तीन घंटे चली।"),
    ("Mr. Blinken will travel to Moscow in June.", "Г-н Блинкен отправится в Москву в июне.", "श्री ब्लिंकन जून में मास्को जाएंगे।"),
    ("The government announced new measures.", "Правительство объявило о новых мерах.", "सरकार ने नए उपायों की घोषणा की।"),
    ("Oil prices fell by 3 percent on Wednesday.", "В среду цены на нефть упали на 3 процента.", "बुधवार को तेल की कीमतें 3 प्रतिशत गिरीं।"),
    ("The team won the match 2-1.", "Команда выиграла матч со счётом 2:1.", "टीम ने मैच 2-1 से जीता।"),
    ("The new bridge cost 45 million dollars.", "Новый мост обошёлся в 45 миллионов долларов.", "नए पुल की लागत 4.5 करोड़ डॉलर रही।"),
    ("Thousands of people gathered in the square.", "Тысячи людей собрались на площади.", "हजारों लोग चौक पर जमा हुए।"),
    ("The report was published on 12 March 2024.", "Доклад был опубликован 12 марта 2024 года.", "रिपोर्ट 12 मार्च 2024 को प्रकाशित हुई।"),
    ("The airport was closed for six hours.", "Аэропорт был закрыт на шесть часов.", "हवाई अड्डा छह घंटे तक बंद रहा।"),
    ("Officials said the fire was under control.", "Официальные лица заявили, что пожар взят под контроль.", "अधिकारियों ने कहा कि आग पर काबू पा लिया गया।"),
    ("The prime minister spoke to reporters.", "Премьер-министр поговорил с журналистами.", "प्रधानमंत्री ने पत्रकारों से बात की।"),
    ("Unemployment fell to 4.1 percent.", "Безработица снизилась до 4,1 процента.", "बेरोजगारी घटकर 4.1 प्रतिशत रह गई।"),
    ("The storm left 20,000 homes without power.", "Шторм оставил без электричества 20 000 домов.", "तूफान से 20,000 घरों की बिजली गुल हो गई।"),
    ("Scientists found water on the planet.", "Учёные обнаружили воду на планете.", "वैज्ञानिकों ने ग्रह पर पानी खोजा।"),
    ("The court rejected the appeal.", "Суд отклонил апелляцию.", "अदालत ने अपील खारिज कर दी।"),
    ("The festival begins on Saturday.", "Фестиваль начинается в субботу.", "उत्सव शनिवार को शुरू होगा।"),
    ("Exports to China rose by 8%.", "Экспорт в Китай вырос на 8%.", "चीन को निर्यात 8% बढ़ा।"),
    ("The minister denied the reports.", "Министр опроверг эти сообщения.", "मंत्री ने खबरों का खंडन किया।"),
    ("Talks between the two countries ended without a deal.", "Переговоры между двумя странами завершились без соглашения.", "दोनों देशों के बीच बातचीत बिना किसी समझौते के खत्म हुई।"),
    ("The train was delayed by 40 minutes.", "Поезд задержался на 40 минут.", "ट्रेन 40 मिनट देरी से चली।"),
    ("She won the prize for the second time.", "Она получила премию во второй раз.", "उन्होंने दूसरी बार पुरस्कार जीता।"),
    ("The museum will be open until 9 p.m.", "Музей будет открыт до 21:00.", "संग्रहालय रात 9 बजे तक खुला रहेगा।"),
    ("What did the president say?", "Что сказал президент?", "राष्ट्रपति ने क्या कहा?"),
    ("Is the border open?", "Открыта ли граница?", "क्या सीमा खुली है?"),
    ("The vote was 52 to 48.", "Итоги голосования: 52 против 48.", "मतदान 52 के मुकाबले 48 रहा।"),
    ("Antony J. Blinken is the U.S. Secretary of State.", "Энтони Дж. Блинкен — государственный секретарь США.", "एंटनी जे. ब्लिंकन अमेरिका के विदेश मंत्री हैं।"),
    ("The U.S. and India signed an agreement.", "США и Индия подписали соглашение.", "अमेरिका और भारत ने एक समझौते पर हस्ताक्षर किए।"),
    ("The hospital treated 15 patients.", "В больнице лечили 15 пациентов.", "अस्पताल में 15 मरीजों का इलाज किया गया।"),
    ("The city plans to build 1,000 new homes.", "Город планирует построить 1000 новых домов.", "शहर की 1,000 नए घर बनाने की योजना है।"),
    ("Temperatures reached 45 degrees.", "Температура достигла 45 градусов.", "तापमान 45 डिग्री तक पहुंच गया।"),
    ("The bank opened a new office in London.", "Банк открыл новый офис в Лондоне.", "बैंक ने लंदन में नया दफ्तर खोला।"),
    ("Farmers protested against the new law.", "Фермеры протестовали против нового закона.", "किसानों ने नए कानून के खिलाफ प्रदर्शन किया।"),
    ("The road will be closed on Sunday.", "Дорога будет закрыта в воскресенье.", "सड़क रविवार को बंद रहेगी।"),
    ("The ship arrived at the port on time.", "Корабль прибыл в порт вовремя.", "जहाज समय पर बंदरगाह पहुंचा।"),
    ('"This is a historic day," she said.', "«Это исторический день», — сказала она.", '"यह एक ऐतिहासिक दिन है," उन्होंने कहा।'),
    ("The company will cut 500 jobs.", "Компания сократит 500 рабочих мест.", "कंपनी 500 नौकरियों में कटौती करेगी।"),
    ("The film earned $30 million in its first week.", "Фильм заработал 30 миллионов долларов за первую неделю.", "फिल्म ने पहले सप्ताह में 3 करोड़ डॉलर कमाए।"),
    ("Rescue teams are searching for survivors.", "Спасатели ищут выживших.", "बचाव दल जीवित बचे लोगों की तलाश कर रहे हैं।"),
    ("The summit will take place in New Delhi.", "Саммит пройдёт в Нью-Дели.", "शिखर सम्मेलन नई दिल्ली में होगा।"),
    ("The minister resigned on Thursday.", "Министр ушёл в отставку в четверг.", "मंत्री ने गुरुवार को इस्तीफा दे दिया।"),
    ("Inflation slowed to 5.2% in April.", "В апреле инфляция замедлилась до 5,2%.", "अप्रैल में महंगाई घटकर 5.2% रह गई।"),
    ("The police closed the main road.", "Полиция перекрыла главную дорогу.", "पुलिस ने मुख्य सड़क बंद कर दी।"),
    ("Voters will choose a new mayor.", "Избиратели выберут нового мэра.", "मतदाता नया महापौर चुनेंगे।"),
    ("The price of bread has doubled.", "Цена на хлеб выросла вдвое.", "रोटी की कीमत दोगुनी हो गई है।"),
    ("The satellite was launched at 6:30 a.m.", "Спутник был запущен в 6:30 утра.", "उपग्रह सुबह 6:30 बजे प्रक्षेपित किया गया।"),
    ("Both leaders called the meeting useful.", "Оба лидера назвали встречу полезной.", "दोनों नेताओं ने बैठक को उपयोगी बताया।"),
    ("The president will visit Japan and Korea.", "Президент посетит Японию и Корею.", "राष्ट्रपति जापान और कोरिया की यात्रा करेंगे।"),
    ("A new study was published today.", "Сегодня было опубликовано новое исследование.", "आज एक नया अध्ययन प्रकाशित हुआ।"),
    ("The factory employs 2,500 workers.", "На заводе работают 2500 человек.", "कारखाने में 2,500 कर्मचारी काम करते हैं।"),
    ("The river rose by two meters overnight.", "За ночь уровень реки поднялся на два метра.", "रात भर में नदी का जलस्तर दो मीटर बढ़ गया।"),
    ("He was born in 1962 in New York.", "Он родился в 1962 году в Нью-Йорке.", "उनका जन्म 1962 में न्यूयॉर्क में हुआ था।"),
    ("The market opened higher on Monday.", "В понедельник рынок открылся ростом.", "सोमवार को बाजार बढ़त के साथ खुला।"),
    ("The plane landed safely.", "Самолёт благополучно приземлился.", "विमान सुरक्षित उतर गया।"),
    ("The decision was welcomed by the opposition.", "Оппозиция приветствовала это решение.", "विपक्ष ने इस फैसले का स्वागत किया।"),
    ("Tickets cost 25 euros.", "Билеты стоят 25 евро.", "टिकट की कीमत 25 यूरो है।"),
    ("The project will take five years.", "Проект займёт пять лет.", "परियोजना में पांच साल लगेंगे।"),
    ("Dr. Sharma said the vaccine is safe.", "Доктор Шарма заявил, что вакцина безопасна.", "डॉ. शर्मा ने कहा कि टीका सुरक्षित है।"),
    ("The school has 800 students.", "В школе учатся 800 учеников.", "स्कूल में 800 छात्र हैं।"),
    ('The minister said: "The economy is strong."', "Министр сказал: «Экономика сильна».", 'मंत्री ने कहा: "अर्थव्यवस्था मजबूत है।"'),
    ("The fire started at 3 a.m. on Sunday.", "Пожар начался в 3 часа ночи в воскресенье.", "आग रविवार सुबह 3 बजे लगी।"),
    ("The U.S. dollar rose against the euro.", "Доллар США вырос по отношению к евро.", "अमेरिकी डॉलर यूरो के मुकाबले मजबूत हुआ।"),
    ("Trade between the countries reached $50 billion.", "Товарооборот между странами достиг 50 миллиардов долларов.", "दोनों देशों के बीच व्यापार 50 अरब डॉलर तक पहुंचा।"),
    ("The new law comes into force on 1 July.", "Новый закон вступает в силу 1 июля.", "नया कानून 1 जुलाई से लागू होगा।"),
    ("The singer gave a concert in Mumbai.", "Певица дала концерт в Мумбаи.", "गायिका ने मुंबई में संगीत कार्यक्रम दिया।"),
    ("Thank you very much.", "Большое спасибо.", "बहुत-बहुत धन्यवाद।"),
    ("Good morning, everyone!", "Доброе утро всем!", "सभी को सुप्रभात!"),
    ("The results will be announced tomorrow.", "Результаты будут объявлены завтра.", "नतीजे कल घोषित किए जाएंगे।"),
    ("Blinken and Lavrov spoke by phone.", "Блинкен и Лавров поговорили по телефону.", "ब्लिंकन और लावरोव ने फोन पर बात की।"),
    ("The earthquake had a magnitude of 6.1.", "Магнитуда землетрясения составила 6,1.", "भूकंप की तीव्रता 6.1 थी।"),
    ("About 40% of voters support the plan.", "Около 40% избирателей поддерживают этот план.", "लगभग 40% मतदाता इस योजना का समर्थन करते हैं।"),
    ("The children returned home safely.", "Дети благополучно вернулись домой.", "बच्चे सुरक्षित घर लौट आए।"),
    ("The company was founded in 1998.", "Компания была основана в 1998 году.", "कंपनी की स्थापना 1998 में हुई थी।"),
    ("Snow is expected in the north.", "На севере ожидается снег.", "उत्तर में बर्फबारी की संभावना है।"),
    ("The index closed at 18,250 points.", "Индекс закрылся на отметке 18 250 пунктов.", "सूचकांक 18,250 अंक पर बंद हुआ।"),
    ("Officials met again on Wednesday.", "Чиновники снова встретились в среду.", "अधिकारी बुधवार को फिर मिले।"),
    ("Why did prices rise?", "Почему выросли цены?", "कीमतें क्यों बढ़ीं?"),
    ("The agreement was signed in Washington, D.C.", "Соглашение было подписано в Вашингтоне.", "समझौते पर वाशिंगटन डी.सी. में हस्ताक्षर हुए।"),
    ("The visit lasted two days (May 3-4).", "Визит продлился два дня (3–4 мая).", "यात्रा दो दिन (3-4 मई) चली।"),
    ("Sales rose 12% year-on-year.", "Продажи выросли на 12% в годовом исчислении.", "बिक्री में सालाना आधार पर 12% की वृद्धि हुई।"),
    ("The new rules apply to all citizens.", "Новые правила распространяются на всех граждан.", "नए नियम सभी नागरिकों पर लागू होते हैं।"),
    ("It was the warmest year on record.", "Это был самый тёплый год за всю историю наблюдений.", "यह अब तक का सबसे गर्म वर्ष था।"),
    ('"No comment," a spokesman said.', "«Без комментариев», — сказал представитель.", '"कोई टिप्पणी नहीं," एक प्रवक्ता ने कहा।'),
]
LANG_INDEX = {"en": 0, "ru": 1, "hi": 2}

# Source-side (English side) tokenization cases. Each is (text, note).
SOURCE_CASES = [
    ("", "empty string: only </s>"),
    ("The minister arrived in Delhi on Monday.", "training sentence"),
    ("Antony J. Blinken met the U.S. ambassador in New Delhi.", "names, initials, abbreviations"),
    ("The central bank raised rates by 0.25% on 12/31/2024.", "digits and punctuation"),
    ('"We\'re not going to stop," he said.', "ASCII quotes and apostrophe"),
    ("\u201cSmart quotes\u201d, \u2018single\u2019 \u2014 em dash\u2026 and \u00abguillemets\u00bb", "typographic punctuation, ellipsis (NFKC folds it)"),
    ("  leading and trailing  ", "leading/trailing spaces"),
    ("multiple    spaces\tand\ttabs\nand\n\nnewlines", "runs of whitespace"),
    ("non\u00a0breaking\u2009thin\u3000ideographic spaces", "unicode spaces"),
    ("zero\u200bwidth\u200dchars", "zero-width characters"),
    ("\uff26\uff55\uff4c\uff4c\uff57\uff49\uff44\uff54\uff48 \uff11\uff12\uff13 and \ufb01ne \u2460", "NFKC: fullwidth, ligature, circled digit"),
    ("Cafe\u0301 cre\u0300me na\u00efve", "combining marks and precomposed letters"),
    ("Emoji \U0001F600\U0001F600 and flags \U0001F1EE\U0001F1F3!", "characters outside the vocabulary (merged unknown run)"),
    ("\u5317\u4eac 2024\u5e74 \uc11c\uc6b8", "CJK and Hangul, out of vocabulary"),
    (">>rus<< Hello world", "language code prefix; >>rus<< is in neither vocab.json, so its id is <unk>"),
    (">>hin<< Hello world", "language code prefix (in vocab.json of tiny-en-hi only)"),
    (">>hin<<Hello", "language code prefix without a space"),
    ("Hello >>hin<< world", "language code not at the start: plain text"),
    (">>unfinished code", "'>>' without a closing '<<'"),
    ("Hello </s> world <pad> and <unk>", "special-token strings inside text"),
    ("12345678901234567890 3.14159 -7 +1 1,000,000", "long digit runs"),
    ("!!!???...;;;:::---___***", "punctuation runs"),
    ("UPPER CASE NEWS FROM WASHINGTON, D.C.", "upper case"),
    ("\u041c\u0438\u043d\u0438\u0441\u0442\u0440 \u043f\u0440\u0438\u0431\u044b\u043b \u0432 \u0414\u0435\u043b\u0438.", "Russian on the source (English) side"),
    ("\u092e\u0902\u0924\u094d\u0930\u0940 \u0938\u094b\u092e\u0935\u093e\u0930 \u0915\u094b \u0926\u093f\u0932\u094d\u0932\u0940 \u092a\u0939\u0941\u0902\u091a\u0947\u0964", "Hindi on the source (English) side"),
    ("Mixed: Blinken \u0411\u043b\u0438\u043d\u043a\u0435\u043d \u092c\u094d\u0932\u093f\u0902\u0915\u0928 $5", "mixed scripts"),
    ("Zebra quiz: Xavier's jukebox voxel? 99 zq", "rare Latin letters"),
    ("a", "single letter"),
    (".", "single punctuation"),
    (
        "The U.S. economy grew by 2.4 percent last year, the central bank said on Tuesday, "
        "while prices rose for the third month in a row and unemployment fell to 4.1 percent.",
        "long sentence",
    ),
]


@dataclass
class MarianSpec:
    """One tiny Marian checkpoint: what differs between en-ru and en-hi."""

    name: str
    target: str  # "ru" or "hi"
    source_lang: str
    target_lang: str
    src_spm_vocab: int
    tgt_spm_vocab: int
    excluded_pieces: list  # spm pieces deliberately left out of vocab.json
    language_codes: list  # ">>xxx<<" tokens put into vocab.json
    config: dict
    generation: dict
    train_steps: int
    learning_rate: float
    target_cases: list = field(default_factory=list)  # (text, note)


RU_TARGET_CASES = [
    ("", "empty string"),
    ("Министр прибыл в Дели в понедельник.", "training sentence"),
    ("Энтони Дж. Блинкен встретился с министром.", "names"),
    ("«Мы не остановимся», — сказал президент.", "guillemets and em dash"),
    ("Ёжик ёлка Ё", "ё is excluded from vocab.json; Ё unseen"),
    ("Цены выросли на 3,5% в 2024 году.", "numbers"),
    ("  лишние   пробелы  ", "extra spaces"),
    ("Привет 😀 мир", "emoji on the target side"),
    ("Hello world", "English on the target side"),
    ("Щука съела жёлтый хвощ.", "rare Cyrillic letters"),
]
HI_TARGET_CASES = [
    ("", "empty string"),
    ("मंत्री सोमवार को दिल्ली पहुंचे।", "training sentence"),
    ("एंटनी जे. ब्लिंकन ने कहा।", "names"),
    ('"हम नहीं रुकेंगे," राष्ट्रपति ने कहा।', "quotes"),
    ("डॉलर और डॉक्टर", "ॉ (candra o) is excluded from vocab.json"),
    ("कीमतें 3.5% बढ़ीं, 2024 में।", "numbers"),
    ("  अतिरिक्त   रिक्त स्थान  ", "extra spaces"),
    ("नमस्ते 😀 दुनिया", "emoji on the target side"),
    ("Hello world", "English on the target side"),
    ("क़ ख़ ग़ ज़ ड़ ढ़ फ़", "nukta forms (NFKC/NFC composition)"),
]

# The batch recorded for encoder/decoder/generation parity: different lengths,
# so the padded batch has real padding. The first is a training sentence.
BATCH_SOURCES = [
    "Antony J. Blinken met the foreign minister of India.",
    "The minister will visit Moscow in May.",
    '"Prices rose by 3.5% in June," the U.S. central bank said on Tuesday.',
    "Thank you.",
]

MARIAN_SPECS = [
    MarianSpec(
        name="tiny-en-ru",
        target="ru",
        source_lang="eng",
        target_lang="rus",
        src_spm_vocab=260,
        tgt_spm_vocab=320,
        excluded_pieces=["$", "ё", "▁Delhi"],
        language_codes=[],
        config=dict(
            d_model=64,
            encoder_layers=2,
            decoder_layers=2,
            encoder_attention_heads=4,
            decoder_attention_heads=4,
            encoder_ffn_dim=128,
            decoder_ffn_dim=128,
            max_position_embeddings=256,
            activation_function="swish",
            scale_embedding=True,
        ),
        # As in Helsinki-NLP/opus-mt-*/generation_config.json, with a small max_length.
        generation=dict(max_length=64, num_beams=4, forced_eos_token_id=0),
        train_steps=300,
        learning_rate=3e-3,
        target_cases=RU_TARGET_CASES,
    ),
    MarianSpec(
        name="tiny-en-hi",
        target="hi",
        source_lang="eng",
        target_lang="hin",
        src_spm_vocab=240,
        tgt_spm_vocab=300,
        excluded_pieces=["%", "ॉ"],
        language_codes=[">>hin<<", ">>urd<<"],
        config=dict(
            d_model=48,
            encoder_layers=3,
            decoder_layers=1,
            encoder_attention_heads=6,
            decoder_attention_heads=2,
            encoder_ffn_dim=96,
            decoder_ffn_dim=80,
            max_position_embeddings=128,
            activation_function="gelu",
            scale_embedding=False,
        ),
        generation=dict(max_length=40, num_beams=3, length_penalty=0.8, no_repeat_ngram_size=3),
        # At 3e-3 this smaller, unscaled-embedding model collapses into ignoring its input.
        train_steps=1000,
        learning_rate=1.5e-3,
        target_cases=HI_TARGET_CASES,
    ),
]


# ---------------------------------------------------------------------------
# Shared helpers (every family).
# ---------------------------------------------------------------------------
def seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def configure_torch() -> None:
    import torch

    torch.set_num_threads(1)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set in this process
        pass
    torch.use_deterministic_algorithms(True)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def f32(x) -> float:
    """A float32 value as the float64 equal to it (exact round trip)."""
    import numpy as np

    v = float(np.float32(x))
    if not math.isfinite(v):
        raise ValueError(f"non-finite float {v}")
    return v


def tensor(t) -> dict:
    """{"shape": [...], "data": [...]} for a float tensor (float32 values)."""
    t = t.detach().to("cpu")
    return {"shape": list(t.shape), "data": [f32(x) for x in t.float().reshape(-1).tolist()]}


def _scalar(x) -> str:
    if x is None:
        return "null"
    if isinstance(x, bool):
        return "true" if x else "false"
    if isinstance(x, int):
        return str(x)
    if isinstance(x, float):
        if not math.isfinite(x):
            raise ValueError(f"non-finite float {x}")
        return repr(x)
    if isinstance(x, str):
        s = json.dumps(x, ensure_ascii=False)
        # Escape invisible characters so the file shows what the strings hold.
        return "".join(c if c.isprintable() or c in "\"\\" else "\\u%04x" % ord(c) for c in s)
    raise TypeError(f"cannot write {type(x)}")


def _dump(obj, indent: int) -> str:
    pad = "  " * indent
    if isinstance(obj, dict):
        if not obj:
            return "{}"
        items = [f"{pad}  {_scalar(str(k))}: {_dump(v, indent + 1)}" for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(obj, (list, tuple)):
        if not obj:
            return "[]"
        if all(not isinstance(x, (dict, list, tuple)) for x in obj):
            parts = [_scalar(x) for x in obj]
            if len(parts) <= 32:
                return "[" + ", ".join(parts) + "]"
            lines = [", ".join(parts[i : i + 16]) for i in range(0, len(parts), 16)]
            return "[\n" + ",\n".join(pad + "  " + line for line in lines) + "\n" + pad + "]"
        items = [pad + "  " + _dump(x, indent + 1) for x in obj]
        return "[\n" + ",\n".join(items) + "\n" + pad + "]"
    return _scalar(obj)


def write_json(path: Path, obj) -> None:
    text = _dump(obj, 0) + "\n"
    assert json.loads(text) == json.loads(json.dumps(obj)), "JSON writer lost information"
    path.write_text(text, encoding="utf-8")


def train_seq2seq(model, batches, steps: int, lr: float, log_every: int = 100) -> list:
    """Teacher-forced cross-entropy with Adam over fixed batches; returns the loss curve."""
    import torch

    # final_logits_bias is a buffer in transformers; train it too so it is not all zeros.
    params = [p for p in model.parameters() if p.requires_grad]
    extra = []
    if hasattr(model, "final_logits_bias"):
        model.final_logits_bias.requires_grad_(True)
        extra = [model.final_logits_bias]
    opt = torch.optim.Adam(params + extra, lr=lr)
    model.train()
    curve = []
    for step in range(steps):
        batch = batches[step % len(batches)]
        out = model(**batch)
        opt.zero_grad()
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(params + extra, 1.0)
        opt.step()
        if step % log_every == 0 or step == steps - 1:
            curve.append([step, f32(out.loss.item())])
            print(f"    step {step:4d} loss {out.loss.item():.4f}", flush=True)
    model.eval()
    if extra:
        model.final_logits_bias.requires_grad_(False)
    return curve


def strip_trailing(ids: list, pad_id: int) -> list:
    """Drop the padding generate() adds after a finished sequence (keep position 0)."""
    ids = list(ids)
    while len(ids) > 1 and ids[-1] == pad_id:
        ids.pop()
    return ids


RESOLVED_FIELDS = [
    "max_length", "max_new_tokens", "min_length", "min_new_tokens", "do_sample", "num_beams",
    "early_stopping", "length_penalty", "no_repeat_ngram_size", "encoder_no_repeat_ngram_size",
    "repetition_penalty", "bad_words_ids", "forced_bos_token_id", "forced_eos_token_id",
    "bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id",
    "renormalize_logits", "num_return_sequences", "use_cache",
]


def resolved_generation_config(model, kwargs: dict) -> dict:
    """The generation parameters generate() ends up with: checkpoint defaults + kwargs + global defaults."""
    gc, _ = model._prepare_generation_config(None, **kwargs)
    out = {k: getattr(gc, k, None) for k in RESOLVED_FIELDS}
    if out["decoder_start_token_id"] is None:
        out["decoder_start_token_id"] = model.config.decoder_start_token_id
    # What max_length means after _prepare_generated_length (decoder prompt = 1 start token).
    out["effective_max_length"] = gc.max_new_tokens + 1 if gc.max_new_tokens is not None else gc.max_length
    return out


def record_generation(model, tokenizer, batch, settings: list) -> list:
    """Run generate() for each (name, kwargs): batched, then each row alone."""
    import torch

    pad_id = model.config.pad_token_id
    n = batch["input_ids"].shape[0]
    results = []
    for name, kwargs in settings:
        with torch.no_grad():
            out = model.generate(**batch, **kwargs, output_scores=True, return_dict_in_generate=True)
        seqs = out.sequences.tolist()
        resolved = resolved_generation_config(model, kwargs)
        beams = resolved["num_beams"]
        eos = resolved["eos_token_id"]
        # Finished rows are filled with pad, but beam search fills with `pad_token_id or
        # eos_token_id` (GenerationMixin._beam_search): eos where pad is 0, as in T5.
        fill = pad_id if beams == 1 else (pad_id or (eos[0] if isinstance(eos, list) else eos))
        entry = {
            "name": name,
            "kwargs": kwargs,
            "resolved": resolved,
            "sequences": seqs,
            "text": tokenizer.batch_decode(seqs, skip_special_tokens=True),
        }
        if getattr(out, "sequences_scores", None) is not None:
            entry["sequences_scores"] = [f32(x) for x in out.sequences_scores.tolist()]
        if beams == 1:
            # Per row, per generated step: top-1 minus top-2 of the processed scores that
            # argmax saw (null where only one token was allowed, e.g. forced eos).
            margins = []
            for b in range(n):
                row_len = len(strip_trailing(seqs[b], pad_id)) - 1
                row = []
                for t in range(row_len):
                    top = torch.topk(out.scores[t][b].float(), 2).values.tolist()
                    assert out.scores[t][b].argmax().item() == seqs[b][t + 1]
                    row.append(f32(top[0] - top[1]) if math.isfinite(top[1]) else None)
                margins.append(row)
            entry["greedy_margins"] = margins
            finite = [m for row in margins for m in row if m is not None]
            entry["min_greedy_margin"] = min(finite) if finite else None
        alone, same = [], []
        for b in range(n):
            mask = batch["attention_mask"][b].bool()
            single = {
                "input_ids": batch["input_ids"][b][mask].unsqueeze(0),
                "attention_mask": batch["attention_mask"][b][mask].unsqueeze(0),
            }
            with torch.no_grad():
                s = model.generate(**single, **kwargs)[0].tolist()
            alone.append(s)
            same.append(strip_trailing(s, fill) == strip_trailing(seqs[b], fill))
        entry["alone_equals_batched"] = same
        if not all(same):
            entry["alone_sequences"] = alone
        results.append(entry)
    return results


def fresh_dir(family: str, name: str) -> Path:
    """tests/fixtures/<family>/<name>/, emptied."""
    out_dir = FIXTURES / family / name
    print(f"[{family}] {name} -> {out_dir.relative_to(REPO)}", flush=True)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    return out_dir


def make_readable(out_dir: Path) -> None:
    for p in out_dir.iterdir():
        p.chmod(0o644)  # safetensors writes 0600


def file_hashes(out_dir: Path) -> dict:
    """{file name: sha256} of every file but reference.json."""
    return {p.name: sha256(p) for p in sorted(out_dir.iterdir()) if p.name != "reference.json"}


def safetensors_names(path: Path) -> list:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return sorted(f.keys())


def training_batches(enc, pad_id: int, size: int = 32) -> list:
    """Shuffled (fixed seed) batches of a padded `tokenizer(..., text_target=...)` encoding;
    label padding becomes -100 so the loss ignores it."""
    import torch

    labels = enc["labels"].masked_fill(enc["labels"] == pad_id, -100)
    n = enc["input_ids"].shape[0]
    order = torch.randperm(n, generator=torch.Generator().manual_seed(SEED)).tolist()
    batches = []
    for i in range(0, len(order), size):
        idx = torch.tensor(order[i : i + size])
        batches.append({"input_ids": enc["input_ids"][idx], "attention_mask": enc["attention_mask"][idx],
                        "labels": labels[idx]})
    return batches


def greedy_and_forward(model, batch, sources: list, start_id: int, prefix: str | None = None) -> tuple:
    """Greedy outputs of the batch (plain greedy on top of the checkpoint's settings) and the
    `forward` reference: encoder states and the logits of the first two decoder steps
    (the start token, then greedy's first token)."""
    import torch

    with torch.no_grad():
        greedy = model.generate(**batch, num_beams=1, do_sample=False).tolist()
        enc_out = model.get_encoder()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        dec_in = torch.tensor([[start_id, row[1]] for row in greedy])
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                       decoder_input_ids=dec_in).logits
    forward = {"sources": sources}
    if prefix is not None:
        forward["prefix"] = prefix
    forward.update({
        "input_ids": batch["input_ids"].tolist(),
        "attention_mask": batch["attention_mask"].tolist(),
        "encoder_last_hidden_state": tensor(enc_out.last_hidden_state),
        "decoder_input_ids": dec_in.tolist(),
        "decoder_logits": tensor(logits),
    })
    return greedy, forward


def common_generation_settings(greedy_ids: list, pad_id: int, *, first: int = 1, min_length: int,
                               min_new_tokens: int, max_new_tokens: tuple, max_length: int,
                               no_repeat: int) -> list:
    """The generate() kwargs every family records. Bad words come from the greedy output:
    greedy's 2nd content token of row 0, and its first two content tokens of row 2
    (`first`: index of the first content token, after the start and any forced BOS)."""
    bad_single = greedy_ids[0][first + 1]
    bad_pair = list(greedy_ids[2][first : first + 2])
    bad = [[pad_id], [bad_single], bad_pair]
    greedy_new, beam_new = max_new_tokens
    return [
        ("checkpoint_defaults", {}),
        ("greedy", {"num_beams": 1, "do_sample": False}),
        ("beam4", {"num_beams": 4, "do_sample": False}),
        ("beam4_length_penalty_0.6", {"num_beams": 4, "length_penalty": 0.6}),
        ("beam4_length_penalty_2.0", {"num_beams": 4, "length_penalty": 2.0}),
        ("beam4_early_stopping_true", {"num_beams": 4, "early_stopping": True}),
        ("beam4_early_stopping_false", {"num_beams": 4, "early_stopping": False}),
        ("beam4_early_stopping_never", {"num_beams": 4, "early_stopping": "never"}),
        (f"greedy_min_length_{min_length}", {"num_beams": 1, "min_length": min_length}),
        (f"beam4_min_new_tokens_{min_new_tokens}", {"num_beams": 4, "min_new_tokens": min_new_tokens}),
        (f"greedy_max_new_tokens_{greedy_new}", {"num_beams": 1, "max_new_tokens": greedy_new}),
        (f"beam4_max_new_tokens_{beam_new}", {"num_beams": 4, "max_new_tokens": beam_new}),
        (f"greedy_max_length_{max_length}", {"num_beams": 1, "max_length": max_length}),
        (f"greedy_no_repeat_ngram_{no_repeat}", {"num_beams": 1, "no_repeat_ngram_size": no_repeat}),
        (f"beam4_no_repeat_ngram_{no_repeat}", {"num_beams": 4, "no_repeat_ngram_size": no_repeat}),
        ("greedy_repetition_penalty_1.3", {"num_beams": 1, "repetition_penalty": 1.3}),
        ("beam4_repetition_penalty_1.3", {"num_beams": 4, "repetition_penalty": 1.3}),
        ("greedy_bad_words", {"num_beams": 1, "bad_words_ids": [list(b) for b in bad]}),
        ("beam4_bad_words", {"num_beams": 4, "bad_words_ids": [list(b) for b in bad]}),
    ]


def source_tokenization(tok, cases: list) -> list:
    """tokenizer(text) for each (text, note), special tokens added as by default."""
    out = []
    for text, note in cases:
        enc = tok(text)
        out.append({
            "text": text,
            "note": note,
            "pieces": tok.tokenize(text),
            "input_ids": enc["input_ids"],
            "attention_mask": enc["attention_mask"],
        })
    return out


def decoding_case(tok, note: str, ids: list, **extra) -> dict:
    """decode(ids) with and without special tokens (extra fields go before `tokens`)."""
    case = {
        "note": note,
        "ids": ids,
        "text": tok.decode(ids, skip_special_tokens=True),
        "text_keep_special": tok.decode(ids, skip_special_tokens=False),
    }
    case.update(extra)
    case["tokens"] = tok.convert_ids_to_tokens(ids)
    return case


# ---------------------------------------------------------------------------
# Marian (Helsinki-NLP/opus-mt-*)
# ---------------------------------------------------------------------------
def train_spm(sentences: list, vocab_size: int, model_type: str = "unigram") -> bytes:
    """A SentencePiece model as Marian's (unigram) or NLLB's and M2M100's sentencepiece.bpe.model
    (bpe): nmt_nfkc, default special ids; as bytes."""
    import sentencepiece as spm

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences),
        model_writer=buf,
        model_type=model_type,
        vocab_size=vocab_size,
        hard_vocab_limit=False,
        character_coverage=1.0,
        normalization_rule_name="nmt_nfkc",
        num_threads=1,
        minloglevel=2,
    )
    return buf.getvalue()


def build_marian_vocab(src_proto: bytes, tgt_proto: bytes, excluded: list, codes: list) -> dict:
    """vocab.json as opus-mt has it: one shared map, </s>=0, <unk>=1, ..., <pad>=last.

    Ids deliberately do not follow either SentencePiece model's ids (as in real
    Marian vocabularies): language codes come first, then the pieces of both
    models interleaved by descending score.
    """
    import sentencepiece as spm

    models = [spm.SentencePieceProcessor(model_proto=p) for p in (src_proto, tgt_proto)]
    all_pieces = set()
    for m in models:
        all_pieces.update(m.id_to_piece(i) for i in range(m.get_piece_size()))
    for piece in excluded:
        assert piece in all_pieces, f"excluded piece {piece!r} is in neither spm model"
    scored = []
    for which, m in enumerate(models):
        for i in range(m.get_piece_size()):
            if m.is_control(i) or m.is_unknown(i):
                continue
            scored.append((-m.get_score(i), which, i, m.id_to_piece(i)))
    scored.sort()
    vocab = {"</s>": 0, "<unk>": 1}
    for code in codes:
        vocab[code] = len(vocab)
    for _, _, _, piece in scored:
        if piece not in vocab and piece not in excluded:
            vocab[piece] = len(vocab)
    vocab["<pad>"] = len(vocab)
    return vocab


def marian_generation_settings(spec: MarianSpec, greedy_ids: list, pad_id: int) -> list:
    """The generate() kwargs recorded; bad words are taken from the greedy output."""
    return common_generation_settings(
        greedy_ids, pad_id, min_length=14, min_new_tokens=10, max_new_tokens=(5, 6), max_length=8, no_repeat=2,
    ) + [
        ("beam3_length_penalty_0.8_no_repeat_3", {"num_beams": 3, "length_penalty": 0.8, "no_repeat_ngram_size": 3}),
    ]


def marian_tokenization(tok, spec: MarianSpec) -> dict:
    source = source_tokenization(tok, SOURCE_CASES)
    target = []
    for text, note in spec.target_cases:
        enc = tok(text_target=text)
        tok._switch_to_target_mode()
        try:
            pieces = tok.tokenize(text)
        finally:
            tok._switch_to_input_mode()
        target.append({"text": text, "note": note, "pieces": pieces, "labels": enc["input_ids"]})
    return {"source": source, "target": target}


def marian_decoding(tok, spec: MarianSpec, greedy_sequences: list) -> dict:
    pad, eos, unk = tok.pad_token_id, tok.eos_token_id, tok.unk_token_id
    ru_hi = [t for t, _ in spec.target_cases]
    tgt_ids = [tok(text_target=t)["input_ids"] for t in ru_hi[1:4]]
    src_ids = tok("Antony J. Blinken met the U.S. ambassador.")["input_ids"]
    cases = [("greedy output row %d" % i, s) for i, s in enumerate(greedy_sequences)]
    cases += [
        ("decoder start + target sentence + eos", [pad] + tgt_ids[0]),
        ("target sentence, no specials", tgt_ids[1][:-1]),
        ("unk in the middle", tgt_ids[2][:3] + [unk] + tgt_ids[2][3:]),
        ("eos in the middle, then more tokens", tgt_ids[0][:-1][:4] + [eos] + tgt_ids[0][:-1][4:]),
        ("padding on both sides", [pad, pad] + tgt_ids[1] + [pad, pad]),
        ("only special tokens", [pad, eos, unk, pad]),
        ("empty", []),
        ("English source ids", src_ids),
        ("every id below 40", list(range(40))),
        ("highest ids", list(range(len(tok.encoder) - 12, len(tok.encoder)))),
    ]
    if spec.language_codes:
        code_id = tok.encoder[spec.language_codes[0]]
        cases.append(("language code token first", [code_id] + tgt_ids[1]))
    out = [
        decoding_case(tok, note, ids,
                      text_target_spm=tok.decode(ids, skip_special_tokens=True, use_source_tokenizer=False))
        for note, ids in cases
    ]
    all_ids = [c["ids"] for c in out]
    return {"cases": out, "batch_decode": tok.batch_decode(all_ids, skip_special_tokens=True)}


def make_marian_checkpoint(spec: MarianSpec, versions: dict) -> Path:
    import sentencepiece as spm
    import torch
    from transformers import (
        AutoModelForSeq2SeqLM,
        AutoTokenizer,
        GenerationConfig,
        MarianConfig,
        MarianMTModel,
        MarianTokenizer,
    )

    out_dir = fresh_dir("marian", spec.name)
    seed_everything(SEED)

    # 1. Tokenizer files.
    src_texts = [row[0] for row in CORPUS]
    tgt_texts = [row[LANG_INDEX[spec.target]] for row in CORPUS]
    src_proto = train_spm(src_texts, spec.src_spm_vocab)
    tgt_proto = train_spm(tgt_texts, spec.tgt_spm_vocab)
    (out_dir / "source.spm").write_bytes(src_proto)
    (out_dir / "target.spm").write_bytes(tgt_proto)
    vocab = build_marian_vocab(src_proto, tgt_proto, spec.excluded_pieces, spec.language_codes)
    with open(out_dir / "vocab.json", "w", encoding="utf-8") as f:
        json.dump(vocab, f, indent=2, ensure_ascii=False)
    tok = MarianTokenizer(
        source_spm=str(out_dir / "source.spm"),
        target_spm=str(out_dir / "target.spm"),
        vocab=str(out_dir / "vocab.json"),
        source_lang=spec.source_lang,
        target_lang=spec.target_lang,
    )
    tok.save_pretrained(str(out_dir))
    tok = MarianTokenizer.from_pretrained(str(out_dir))
    auto_tok = AutoTokenizer.from_pretrained(str(out_dir))
    pad_id = len(vocab) - 1
    assert tok.pad_token_id == pad_id and tok.eos_token_id == 0 and tok.unk_token_id == 1

    # 2. Model config: opus-mt's, with the small sizes of the spec.
    config = MarianConfig(
        vocab_size=len(vocab),
        decoder_vocab_size=len(vocab),
        pad_token_id=pad_id,
        decoder_start_token_id=pad_id,
        eos_token_id=0,
        bos_token_id=0,
        forced_eos_token_id=0,
        share_encoder_decoder_embeddings=True,
        tie_word_embeddings=True,
        dropout=0.1,
        attention_dropout=0.0,
        activation_dropout=0.0,
        architectures=["MarianMTModel"],
        **spec.config,
    )
    # Keys real opus-mt config.json files carry; the PyTorch code ignores them.
    for key, value in dict(normalize_before=False, normalize_embedding=False, static_position_embeddings=True,
                           add_bias_logits=False, add_final_layer_norm=False, extra_pos_embeddings=len(vocab)).items():
        setattr(config, key, value)

    torch.manual_seed(SEED)
    model = MarianMTModel(config)

    # 3. Train (teacher forcing). Inputs: source + </s>; labels: target + </s>.
    enc = tok(src_texts, text_target=tgt_texts, padding=True, return_tensors="pt")
    curve = train_seq2seq(model, training_batches(enc, pad_id), spec.train_steps, spec.learning_rate)

    # 4. Save in the hub layout.
    model.generation_config = GenerationConfig(
        bad_words_ids=[[pad_id]],
        bos_token_id=0,
        decoder_start_token_id=pad_id,
        eos_token_id=0,
        pad_token_id=pad_id,
        **spec.generation,
    )
    model.save_pretrained(str(out_dir), safe_serialization=True)
    if spec.name == "tiny-en-hi":
        # The same weights as a pickled state dict too, as older hub
        # checkpoints ship them (pytorch_model.bin): loaders must read both.
        torch.save(model.state_dict(), str(out_dir / "pytorch_model.bin"))
    make_readable(out_dir)

    # 5. References, from the files just written.
    model = AutoModelForSeq2SeqLM.from_pretrained(str(out_dir), attn_implementation="eager")
    assert type(model) is MarianMTModel
    model.eval()
    tensor_names = safetensors_names(out_dir / "model.safetensors")
    assert model.final_logits_bias.abs().max().item() > 0, "final_logits_bias stayed zero"

    batch = tok(BATCH_SOURCES, padding=True, return_tensors="pt")
    greedy, forward = greedy_and_forward(model, batch, BATCH_SOURCES, pad_id)
    settings = marian_generation_settings(spec, greedy, pad_id)
    generation = record_generation(model, tok, batch, settings)

    tokenization = marian_tokenization(tok, spec)
    # The Auto class must load the same tokenizer (MarianTokenizer has no fast variant).
    assert type(auto_tok).__name__ == "MarianTokenizer", type(auto_tok)
    for case in tokenization["source"]:
        assert auto_tok(case["text"])["input_ids"] == case["input_ids"]

    reference = {
        "format": "precis marian reference v1",
        "generator": "scripts/make_fixtures.py",
        "versions": versions,
        "files": file_hashes(out_dir),
        "checkpoint": {
            "vocab_size": len(vocab),
            "pad_token_id": pad_id,
            "eos_token_id": 0,
            "unk_token_id": 1,
            "decoder_start_token_id": pad_id,
            "spm_pieces": {"source": spm.SentencePieceProcessor(model_proto=src_proto).get_piece_size(),
                           "target": spm.SentencePieceProcessor(model_proto=tgt_proto).get_piece_size()},
            "excluded_pieces": spec.excluded_pieces,
            "language_codes": spec.language_codes,
            "safetensors_tensors": tensor_names,
            "attn_implementation": "eager",
            "train_loss": curve,
        },
        "tokenization": tokenization,
        "decoding": marian_decoding(tok, spec, greedy),
        "forward": forward,
        "generation": generation,
    }
    write_json(out_dir / "reference.json", reference)
    return out_dir


def make_marian(versions: dict) -> list:
    return [make_marian_checkpoint(spec, versions) for spec in MARIAN_SPECS]


# ---------------------------------------------------------------------------
# Summarizers (BART: facebook/bart-large-cnn, sshleifer/distilbart-cnn-12-6;
# T5: google/flan-t5-*, google-t5/t5-small)
# ---------------------------------------------------------------------------
# The task: a short news paragraph (2-4 sentences of CORPUS's English side)
# -> its first sentence, as CNN/DailyMail's lead bias makes real summarizers do.
ENGLISH = [row[0] for row in CORPUS]

# Tokenization cases (text, note): what a summarizer's input can hold.
SUMMARY_CASES = [
    ("", "empty string"),
    ("The minister arrived in Delhi on Monday.", "training sentence"),
    ("summarize: The minister arrived in Delhi on Monday.", "T5 task prefix"),
    ("Antony J. Blinken met the U.S. ambassador in New Delhi.", "names, initials, abbreviations"),
    ("The central bank raised rates by 0.25% on 12/31/2024.", "digits and punctuation"),
    ('"We\'re not going to stop," he said. It\'s 5 o\'clock; don\'t worry, they\'ll\'ve left.', "quotes, contractions"),
    ("\u201cSmart quotes\u201d, \u2018single\u2019 \u2014 em dash\u2026 and \u00abguillemets\u00bb", "typographic punctuation"),
    (" The minister", "one leading space"),
    ("  leading and trailing  ", "leading/trailing spaces"),
    ("multiple    spaces\tand\ttabs", "runs of spaces, tabs"),
    ("First line.\nSecond line.\n\nNew paragraph.\r\nWindows line.", "newlines, blank line, CRLF"),
    ("   ", "whitespace only"),
    ("\n", "newline only"),
    ("non\u00a0breaking\u2009thin\u3000ideographic spaces", "unicode spaces"),
    ("zero\u200bwidth\u200dchars", "zero-width characters"),
    ("\uff26\uff55\uff4c\uff4c\uff57\uff49\uff44\uff54\uff48 \uff11\uff12\uff13 and \ufb01ne \u2460", "NFKC: fullwidth, ligature, circled digit"),
    ("Cafe\u0301 cre\u0300me na\u00efve", "combining marks and precomposed letters"),
    ("\u00c5ngstr\u00f6m, se\u00f1or, Z\u00fcrich, fa\u00e7ade, \u0153uvre, \u0141\u00f3d\u017a", "accented Latin"),
    ("\u041c\u0438\u043d\u0438\u0441\u0442\u0440 \u043f\u0440\u0438\u0431\u044b\u043b \u0432 \u0414\u0435\u043b\u0438.", "Cyrillic"),
    ("\u092e\u0902\u0924\u094d\u0930\u0940 \u0938\u094b\u092e\u0935\u093e\u0930 \u0915\u094b \u0926\u093f\u0932\u094d\u0932\u0940 \u092a\u0939\u0941\u0902\u091a\u0947\u0964", "Hindi"),
    ("Emoji \U0001F600\U0001F600 family \U0001F468\u200d\U0001F469\u200d\U0001F467 flags \U0001F1EE\U0001F1F3!", "emoji, ZWJ sequence, flag"),
    ("\u5317\u4eac 2024\u5e74 \uc11c\uc6b8", "CJK and Hangul"),
    ("Hello </s> world <pad> and <unk>", "special-token strings inside text"),
    ("<s>Hello</s><mask> world <mask>", "BART's <s>, </s>, <mask> inside text"),
    ("<extra_id_0> was <extra_id_1>.", "T5 sentinel strings inside text"),
    ("12345678901234567890 3.14159 -7 +1 1,000,000", "long digit runs"),
    ("!!!???...;;;:::---___***", "punctuation runs"),
    ("UPPER CASE NEWS FROM WASHINGTON, D.C.", "upper case"),
    ("Zebra quiz: Xavier's jukebox voxel? 99 zq", "rare Latin letters"),
    ("a", "single letter"),
    (".", "single punctuation"),
    (" ".join(ENGLISH[:14]), "a long paragraph: more tokens than tiny-cnn's 128 positions and tiny-flan's "
                             "model_max_length 96 (no truncation by default)"),
]


def summarization_pairs() -> list:
    """(paragraph, summary) pairs: 2-4 sentences of ENGLISH, summarized by the first."""
    n = len(ENGLISH)
    pairs = []
    for i in range(n):
        for stride, more in ((31, 1 + i % 3), (17, 1)):
            sentences = [ENGLISH[(i + j * stride) % n] for j in range(1 + more)]
            pairs.append((" ".join(sentences), sentences[0]))
    return pairs


# The batch recorded for encoder/decoder/generation parity: different lengths,
# so the padded batch has real padding, and the longest is longer in tokens
# than tiny-t5's relative_attention_max_distance. The first is a training
# paragraph; the others are new.
SUMMARY_BATCH = [
    summarization_pairs()[3][0],
    "The minister will visit Moscow in May. Talks went on for hours.",
    '"Prices rose by 3.5% in June," the U.S. central bank said on Tuesday.',
    "Thank you.",
]


@dataclass
class SummarizerSpec:
    """One tiny BART or T5 summarization checkpoint."""

    family: str  # "bart" or "t5"
    name: str
    like: str  # the hub checkpoint whose layout and settings it copies
    config: dict  # BartConfig / T5Config architecture arguments
    vocab: int  # BPE vocabulary / SentencePiece pieces asked for
    train_steps: int
    learning_rate: float
    generation: dict | None = None  # generation_config.json settings; None: no generation_config.json
    task_params: dict | None = None  # config.json task_specific_params.summarization
    legacy_config: dict = field(default_factory=dict)  # config.json keys of old hub files (mostly ignored)
    weights: str = "model.safetensors"  # or "pytorch_model.bin"
    tokenizer_json: bool = True  # ship tokenizer.json (+ tokenizer_config.json, special_tokens_map.json)
    tied: bool = True  # T5: lm_head tied to the embeddings (tie_word_embeddings)
    extra_ids: int = 100  # T5 sentinels
    model_max_length: int | None = None  # tokenizer_config.json
    normalization: str = "nmt_nfkc"  # T5 SentencePiece normalization: nmt_nfkc or nfkc_subset
    vocab_multiple: int = 1  # T5: config vocab_size rounded up to this (t5: 32100 -> 32128)
    lengths: dict = field(default_factory=dict)  # numbers for common_generation_settings
    summary_settings: dict = field(default_factory=dict)  # bart-large-cnn-like beam settings recorded


BART_SPECIAL = ["<s>", "<pad>", "</s>", "<unk>"]  # ids 0-3; <mask> is the last id
T5_PREFIX = "summarize: "

SUMMARIZER_SPECS = [
    SummarizerSpec(
        family="bart",
        name="tiny-cnn",
        like="facebook/bart-large-cnn",
        config=dict(
            d_model=48, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4, decoder_attention_heads=4,
            encoder_ffn_dim=96, decoder_ffn_dim=96, activation_function="gelu", scale_embedding=False,
            max_position_embeddings=128,
        ),
        vocab=500,
        train_steps=300,
        learning_rate=2e-3,
        # As in bart-large-cnn/generation_config.json (142/56 there).
        generation=dict(num_beams=4, length_penalty=2.0, min_length=12, max_length=40, no_repeat_ngram_size=3,
                        early_stopping=True, forced_bos_token_id=0, forced_eos_token_id=2),
        legacy_config=dict(add_bias_logits=False, add_final_layer_norm=False, normalize_before=False,
                           normalize_embedding=True, static_position_embeddings=False,
                           force_bos_token_to_be_generated=True),
        model_max_length=128,
        lengths=dict(first=2, min_length=24, min_new_tokens=20, max_new_tokens=(5, 6), max_length=8, no_repeat=3),
        summary_settings=dict(num_beams=4, length_penalty=2.0, min_length=12, max_length=40, no_repeat_ngram_size=3,
                              early_stopping=True),
    ),
    SummarizerSpec(
        family="bart",
        name="tiny-distil",
        like="sshleifer/distilbart-cnn-12-6",
        config=dict(
            d_model=32, encoder_layers=3, decoder_layers=1, encoder_attention_heads=4, decoder_attention_heads=4,
            encoder_ffn_dim=64, decoder_ffn_dim=64, activation_function="relu", scale_embedding=True,
            max_position_embeddings=128,
        ),
        vocab=500,
        train_steps=800,
        learning_rate=2e-3,
        task_params=dict(early_stopping=True, length_penalty=2.0, max_length=36, min_length=14,
                         no_repeat_ngram_size=3, num_beams=4),
        legacy_config=dict(add_bias_logits=False, add_final_layer_norm=False, normalize_before=False,
                           normalize_embedding=True, static_position_embeddings=False,
                           force_bos_token_to_be_generated=True, extra_pos_embeddings=2),
        weights="pytorch_model.bin",
        tokenizer_json=False,
        lengths=dict(first=2, min_length=24, min_new_tokens=20, max_new_tokens=(5, 6), max_length=8, no_repeat=3),
    ),
    SummarizerSpec(
        family="t5",
        name="tiny-flan",
        like="google/flan-t5-small",
        config=dict(
            d_model=48, d_kv=16, num_heads=4, d_ff=64, num_layers=2, num_decoder_layers=2,
            feed_forward_proj="gated-gelu", relative_attention_num_buckets=32, relative_attention_max_distance=128,
        ),
        vocab=300,
        train_steps=400,
        learning_rate=3e-3,
        # As in flan-t5-small/generation_config.json.
        generation=dict(),
        tied=False,
        extra_ids=8,
        model_max_length=96,
        normalization="nfkc_subset",
        vocab_multiple=32,
        lengths=dict(first=1, min_length=24, min_new_tokens=20, max_new_tokens=(5, 6), max_length=8, no_repeat=3),
        summary_settings=dict(num_beams=4, length_penalty=2.0, min_length=10, max_length=32, no_repeat_ngram_size=3,
                              early_stopping=True),
    ),
    SummarizerSpec(
        family="t5",
        name="tiny-t5",
        like="google-t5/t5-small",
        config=dict(
            d_model=32, d_kv=8, num_heads=4, d_ff=64, num_layers=3, num_decoder_layers=2,
            feed_forward_proj="relu", relative_attention_num_buckets=16, relative_attention_max_distance=32,
        ),
        vocab=300,
        train_steps=800,
        learning_rate=1e-2,
        generation=dict(),
        # As in t5-small/config.json (min_length 30, max_length 200 there).
        task_params=dict(early_stopping=True, length_penalty=2.0, max_length=30, min_length=10,
                         no_repeat_ngram_size=3, num_beams=4, prefix=T5_PREFIX),
        tokenizer_json=False,
        vocab_multiple=32,
        lengths=dict(first=1, min_length=24, min_new_tokens=20, max_new_tokens=(5, 6), max_length=8, no_repeat=3),
    ),
]


def rewrite_json(path: Path, set_keys: dict | None = None, drop: tuple = ()) -> None:
    """Edit a config.json written by save_pretrained, keeping its format (indent 2, sorted keys)."""
    obj = json.loads(path.read_text(encoding="utf-8"))
    for key in drop:
        obj.pop(key, None)
    obj.update(set_keys or {})
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def write_special_tokens_map(tok, path: Path) -> None:
    """special_tokens_map.json as transformers 4.x's save_pretrained wrote it (5.x no longer
    writes the file but still reads it); tokens with lstrip/rstrip as objects."""
    by_text = {str(t): t for t in tok.added_tokens_decoder.values()}
    out = {}
    for key, value in tok.special_tokens_map.items():
        t = by_text.get(value)
        if t is not None and (t.lstrip or t.rstrip):
            value = {"content": t.content, "lstrip": t.lstrip, "normalized": t.normalized, "rstrip": t.rstrip,
                     "single_word": t.single_word}
        out[key] = value
    extra = [str(t) for t in getattr(tok, "extra_special_tokens", None) or [] if str(t).startswith("<extra_id_")]
    if extra:
        out["additional_special_tokens"] = sorted(extra, key=lambda t: int(t[len("<extra_id_"):-1]))
    path.write_text(json.dumps(out, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")


# --- tokenizers ------------------------------------------------------------
def train_byte_bpe(texts: list, vocab_size: int) -> tuple:
    """A byte-level BPE vocabulary and merges as BART's (GPT-2's): <s> <pad> </s> <unk> first,
    the 256 byte symbols, merges, then <mask> last."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=BART_SPECIAL, min_frequency=2,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    bpe.train_from_iterator(texts, trainer)
    model = json.loads(bpe.to_str())["model"]
    vocab = dict(sorted(model["vocab"].items(), key=lambda kv: kv[1]))
    assert list(vocab)[:4] == BART_SPECIAL and list(vocab.values()) == list(range(len(vocab)))
    vocab["<mask>"] = len(vocab)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    return vocab, merges


def make_bart_tokenizer(spec: SummarizerSpec, out_dir: Path, pairs: list):
    """vocab.json + merges.txt (hub format), and for tiny-cnn also what save_pretrained writes."""
    from transformers import BartTokenizer

    vocab, merges = train_byte_bpe([a for a, _ in pairs], spec.vocab)
    (out_dir / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (out_dir / "merges.txt").write_text("#version: 0.2\n" + "".join(m + "\n" for m in merges), encoding="utf-8")
    kwargs = {} if spec.model_max_length is None else {"model_max_length": spec.model_max_length}
    tok = BartTokenizer(vocab=str(out_dir / "vocab.json"), merges=str(out_dir / "merges.txt"), **kwargs)
    assert tok.convert_tokens_to_ids(BART_SPECIAL + ["<mask>"]) == [0, 1, 2, 3, len(vocab) - 1]
    if spec.tokenizer_json:
        tok.save_pretrained(str(out_dir))  # tokenizer.json, tokenizer_config.json
        write_special_tokens_map(tok, out_dir / "special_tokens_map.json")
    return tok


def nfkc_subset_rules() -> str:
    """A small SentencePiece normalization rule table (TSV: source code points, target code
    points): NFKC of fullwidth forms, ligatures, circled numbers and a few symbols and spaces,
    NFC of a few combining sequences, and tab/CR/LF to a space. nmt_nfkc's own table would
    add ~240 KB to spiece.model and ~320 KB to tokenizer.json; tiny-t5 ships that one."""
    import unicodedata

    points = [*range(0xFF01, 0xFF5F), *range(0xFB00, 0xFB07), *range(0x2460, 0x2474),
              0xA0, 0x2002, 0x2003, 0x2009, 0x3000, 0x2026, 0x2122, 0xB2, 0xB3, 0xB9, 0xBD]
    lines = []
    for c in map(chr, points):
        n = unicodedata.normalize("NFKC", c)
        if n != c:
            lines.append("%X\t%s" % (ord(c), " ".join("%X" % ord(x) for x in n)))
    for seq in ["e\u0301", "e\u0300", "a\u0301", "i\u0308", "o\u0308", "u\u0308", "n\u0303", "c\u0327"]:
        lines.append("%s\t%X" % (" ".join("%X" % ord(x) for x in seq), ord(unicodedata.normalize("NFC", seq))))
    lines += ["9\t20", "A\t20", "D\t20"]
    return "\n".join(lines) + "\n"


def train_t5_spm(texts: list, spec: SummarizerSpec) -> bytes:
    """A SentencePiece unigram model with T5's ids: <pad> 0, </s> 1, <unk> 2, no <s>."""
    import tempfile

    import sentencepiece as spm

    args = dict(model_type="unigram", vocab_size=spec.vocab, hard_vocab_limit=False, character_coverage=1.0,
                pad_id=0, eos_id=1, unk_id=2, bos_id=-1, num_threads=1, minloglevel=2)
    buf = io.BytesIO()
    with tempfile.TemporaryDirectory() as tmp:
        if spec.normalization == "nfkc_subset":
            rules = Path(tmp) / "rules.tsv"
            rules.write_text(nfkc_subset_rules(), encoding="utf-8")
            args["normalization_rule_tsv"] = str(rules)
        else:
            args["normalization_rule_name"] = spec.normalization
        spm.SentencePieceTrainer.train(sentence_iterator=iter(texts), model_writer=buf, **args)
    proto = buf.getvalue()
    if spec.normalization == "nfkc_subset":
        # The model records the rule file's (temporary) path; drop it.
        from sentencepiece import sentencepiece_model_pb2

        m = sentencepiece_model_pb2.ModelProto()
        m.ParseFromString(proto)
        m.normalizer_spec.ClearField("normalization_rule_tsv")
        proto = m.SerializeToString()
    assert b"rules.tsv" not in proto
    return proto


def make_t5_tokenizer(spec: SummarizerSpec, out_dir: Path, pairs: list):
    """spiece.model, and for tiny-flan what T5Tokenizer.save_pretrained writes."""
    from transformers import T5Tokenizer

    proto = train_t5_spm([T5_PREFIX + a for a, _ in pairs], spec)
    (out_dir / "spiece.model").write_bytes(proto)
    kwargs = dict(vocab_file=str(out_dir / "spiece.model"), extra_ids=spec.extra_ids)
    if spec.model_max_length is not None:
        kwargs["model_max_length"] = spec.model_max_length
    tok = T5Tokenizer(**T5Tokenizer.convert_to_native_format(**kwargs))
    assert tok.convert_tokens_to_ids(["<pad>", "</s>", "<unk>"]) == [0, 1, 2]
    assert tok.convert_tokens_to_ids("<extra_id_0>") == len(tok) - 1
    if spec.tokenizer_json:
        tok.save_pretrained(str(out_dir))  # tokenizer.json, tokenizer_config.json
        write_special_tokens_map(tok, out_dir / "special_tokens_map.json")
    return tok


# --- models ----------------------------------------------------------------
def make_bart_model(spec: SummarizerSpec, vocab_size: int):
    import torch
    from transformers import BartConfig, BartForConditionalGeneration

    config = BartConfig(
        vocab_size=vocab_size, pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=2,
        forced_eos_token_id=2, tie_word_embeddings=True, dropout=0.1, attention_dropout=0.0,
        activation_dropout=0.0, architectures=["BartForConditionalGeneration"], **spec.config,
    )
    torch.manual_seed(SEED)
    return BartForConditionalGeneration(config)


def make_t5_model(spec: SummarizerSpec, tokenizer_size: int):
    import torch
    from transformers import T5Config, T5ForConditionalGeneration

    m = spec.vocab_multiple
    config = T5Config(
        vocab_size=(tokenizer_size + m - 1) // m * m, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
        dropout_rate=0.1, layer_norm_epsilon=1e-6, tie_word_embeddings=spec.tied,
        architectures=["T5ForConditionalGeneration"], **spec.config,
    )
    torch.manual_seed(SEED)
    model = T5ForConditionalGeneration(config)
    if not spec.tied:
        # transformers 5 ties lm_head to the embeddings whatever tie_word_embeddings says
        # (T5Config.__post_init__ keeps the flag only as scale_decoder_outputs); untie it as
        # Flan-T5's is, initialized as T5PreTrainedModel._init_weights does an untied head.
        model.lm_head.weight = torch.nn.Parameter(torch.empty_like(model.shared.weight).normal_(0.0, 1.0))
        model.all_tied_weights_keys.pop("lm_head.weight")
    return model


def save_summarizer(spec: SummarizerSpec, model, out_dir: Path) -> None:
    """config.json (+ generation_config.json) and the weights, as the hub checkpoint has them."""
    import torch
    from transformers import GenerationConfig

    config = model.config
    if spec.task_params is not None:
        config.task_specific_params = {"summarization": dict(spec.task_params)}
        if spec.family == "t5":  # t5-small's config.json has the translation tasks too
            config.task_specific_params.update({
                "translation_en_to_de": {"early_stopping": True, "max_length": 300, "num_beams": 4,
                                         "prefix": "translate English to German: "},
            })
    for key, value in spec.legacy_config.items():
        setattr(config, key, value)
    ids = dict(decoder_start_token_id=config.decoder_start_token_id, eos_token_id=config.eos_token_id,
               pad_token_id=config.pad_token_id)
    if spec.family == "bart":
        ids["bos_token_id"] = config.bos_token_id
    model.generation_config = GenerationConfig(**ids, **(spec.generation or {}))
    if spec.weights == "model.safetensors":
        model.save_pretrained(str(out_dir), safe_serialization=True)
        if spec.generation is None:
            (out_dir / "generation_config.json").unlink()
    else:
        # An old hub checkpoint: config.json and a pickled state dict (tied tensors share storage).
        assert spec.generation is None
        config.save_pretrained(str(out_dir))
        torch.save(model.state_dict(), str(out_dir / spec.weights))
    if spec.family == "t5":
        # As hub T5 config.json files have it: Flan-T5 says tie_word_embeddings false; t5-small
        # leaves it out (default true). transformers 5 writes true plus scale_decoder_outputs.
        drop = ("scale_decoder_outputs", "tie_word_embeddings")
        rewrite_json(out_dir / "config.json", {} if spec.tied else {"tie_word_embeddings": False}, drop)
    make_readable(out_dir)


# --- references ------------------------------------------------------------
def alternative_load(out_dir: Path, files: list, cases: list, reference: list) -> dict:
    """The tokenizer AutoTokenizer loads from a copy of `files` only, against the full directory's."""
    import tempfile

    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        for name in files:
            shutil.copy(out_dir / name, Path(tmp) / name)
        tok = AutoTokenizer.from_pretrained(tmp)
        got = source_tokenization(tok, cases)
    differences = [
        {"text": g["text"], "pieces": g["pieces"], "input_ids": g["input_ids"]}
        for g, r in zip(got, reference)
        if (g["input_ids"], g["pieces"]) != (r["input_ids"], r["pieces"])
    ]
    return {
        "files": files,
        "tokenizer_class": type(tok).__name__,
        "same_as_directory": not differences,
        "differences": differences,
    }


def max_length_or_none(tok):
    """tokenizer.model_max_length, null for transformers' "no limit" (1e30)."""
    n = tok.model_max_length
    return n if n < 2**31 else None


TOKENIZER_FILES = {"vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "spiece.model"}


def summarizer_tokenization(spec: SummarizerSpec, tok, out_dir: Path) -> dict:
    source = source_tokenization(tok, SUMMARY_CASES)
    out = {
        "tokenizer_class": type(tok).__name__,
        "tokenizer_files": sorted(p.name for p in out_dir.iterdir() if p.name in TOKENIZER_FILES),
        "model_max_length": max_length_or_none(tok),
        "add_prefix_space": getattr(tok, "add_prefix_space", None),
        "source": source,
    }
    if spec.family == "bart" and spec.tokenizer_json:
        out["alternative_loads"] = [alternative_load(out_dir, ["config.json", "merges.txt", "vocab.json"],
                                                     SUMMARY_CASES, source)]
    elif spec.family == "t5" and spec.tokenizer_json:
        files = ["config.json", "special_tokens_map.json", "spiece.model", "tokenizer_config.json"]
        out["alternative_loads"] = [alternative_load(out_dir, files, SUMMARY_CASES, source)]
    # special_tokens_map.json (only read by transformers 5 for legacy reasons) changes nothing.
    if (out_dir / "special_tokens_map.json").exists():
        files = sorted(p.name for p in out_dir.iterdir() if p.name not in ("special_tokens_map.json",
                                                                            "reference.json"))
        assert alternative_load(out_dir, files, SUMMARY_CASES, source)["same_as_directory"]
    return out



def summarizer_decoding(spec: SummarizerSpec, tok, greedy: list, vocab_size: int) -> dict:
    def ids(text: str) -> list:
        return tok(text)["input_ids"]

    pad, eos, unk = tok.pad_token_id, tok.eos_token_id, tok.unk_token_id
    a = ids("The minister arrived in Delhi on Monday.")
    b = ids("Antony J. Blinken met the U.S. ambassador.")
    specials = set(tok.all_special_ids)
    plain_b = [i for i in b if i not in specials]
    cases = [("greedy output row %d" % i, s) for i, s in enumerate(greedy)]
    cases += [
        ("sentence as encoded (special tokens added)", a),
        ("sentence, no special tokens", plain_b),
        ("unk in the middle", plain_b[:3] + [unk] + plain_b[3:]),
        ("eos in the middle, then more tokens", plain_b[:4] + [eos] + plain_b[4:]),
        ("padding on both sides", [pad, pad] + a + [pad, pad]),
        ("only special tokens", sorted(specials)),
        ("empty", []),
        ("spaces before punctuation (clean_up_tokenization_spaces)",
         ids("Hello , world . It 's a test ! Is n't it ? Yes : no ; ok")),
        ("non-ASCII round trip", ids("Caf\u00e9 Z\u00fcrich \u041c\u0438\u043d\u0438\u0441\u0442\u0440 \U0001F600.")),
        ("newlines and runs of spaces", ids("One.\nTwo.\n\nThree   spaces")),
        ("every id below 40", list(range(40))),
        ("highest ids", list(range(len(tok) - 12, len(tok)))),
    ]
    if spec.family == "bart":
        emoji = [i for i in ids("\U0001F600") if i not in specials]
        cases += [
            ("mask token between words", plain_b[:2] + [tok.mask_token_id] + plain_b[2:]),
            ("an incomplete UTF-8 sequence (first byte tokens of an emoji)", emoji[:-1]),
        ]
    else:
        sentinel = [tok.convert_tokens_to_ids("<extra_id_%d>" % i) for i in range(2)]
        cases += [
            ("sentinels around words", [sentinel[0]] + plain_b[:3] + [sentinel[1]] + plain_b[3:] + [eos]),
        ]
        if vocab_size > len(tok):
            cases.append(("ids past the tokenizer, inside the model's padded vocabulary",
                          plain_b[:2] + list(range(len(tok), vocab_size)) + plain_b[2:]))
    out = [decoding_case(tok, note, i) for note, i in cases]
    return {
        "clean_up_tokenization_spaces": tok.clean_up_tokenization_spaces,
        "cases": out,
        "batch_decode": tok.batch_decode([c["ids"] for c in out], skip_special_tokens=True),
    }


def summarizer_generation_settings(spec: SummarizerSpec, greedy: list, pad_id: int) -> list:
    settings = common_generation_settings(greedy, pad_id, **spec.lengths)
    settings.append(("beam4_length_penalty_1.0", {"num_beams": 4, "length_penalty": 1.0}))
    settings.append(("beam4_max_length_10", {"num_beams": 4, "max_length": 10}))
    if spec.task_params is not None:
        # What transformers 4.x's summarization pipeline did with task_specific_params
        # (the prefix goes in front of the text; forward.prefix already has it for T5).
        kwargs = {k: v for k, v in spec.task_params.items() if k != "prefix"}
        settings.append(("task_specific_params_summarization", kwargs))
    if spec.summary_settings:
        settings.append(("beam4_summarization_settings", dict(spec.summary_settings)))
    if spec.family == "bart":
        forced = greedy[0][spec.lengths["first"]]  # row 0's first content token, forced on every row
        settings += [
            (f"greedy_forced_bos_{forced}", {"num_beams": 1, "forced_bos_token_id": forced}),
            ("greedy_no_repeat_ngram_0_min_length_0", {"num_beams": 1, "no_repeat_ngram_size": 0, "min_length": 0}),
            ("greedy_forced_bos_0", {"num_beams": 1, "forced_bos_token_id": 0}),
            ("greedy_forced_bos_none", {"num_beams": 1, "forced_bos_token_id": None}),
            ("beam4_forced_bos_none_forced_eos_none", {"num_beams": 4, "forced_bos_token_id": None,
                                                       "forced_eos_token_id": None}),
            ("greedy_max_length_12_forced_eos_2", {"num_beams": 1, "max_length": 12, "forced_eos_token_id": 2}),
            ("greedy_max_length_12_forced_eos_none", {"num_beams": 1, "max_length": 12, "forced_eos_token_id": None}),
        ]
    return settings


TASK_PARAMS_NOTE = (
    "task_specific_params: transformers 5.24.0 never reads config.task_specific_params; no file of the installed "
    "package mentions it. generate() takes its settings from GenerationMixin._prepare_generation_config "
    "(generation/utils.py): kwargs > model.generation_config > GenerationConfig._get_default_generation_params() "
    "(max_length 20, num_beams 1, ...). model.generation_config is generation_config.json, or, where the "
    "checkpoint has none, GenerationConfig.from_model_config over config.json's raw top-level keys "
    "(GenerationMixin.adjust_generation_fn; PreTrainedConfig.__post_init__ in configuration_utils.py pops "
    "generation keys from the model config itself). The summarization pipeline that applied "
    "task_specific_params is gone: pipelines/__init__.py lists 'summarization' (and 'text2text-generation', "
    "'translation') in REMOVED_TASKS, and pipeline('summarization') raises KeyError. transformers 4.x's "
    "Pipeline.__init__ (pipelines/base.py) did generation_config.update(**task_specific_params[task]) after "
    "popping 'prefix', which Text2TextGenerationPipeline._parse_and_tokenize put in front of every input. "
    "So generation 'checkpoint_defaults' is plain generate() with what transformers derives, and "
    "'task_specific_params_summarization' passes the summarization entry (less prefix) as kwargs: the settings "
    "the 4.x pipeline used."
)


def summarizer_notes(spec: SummarizerSpec, tok, model) -> list:
    notes = []
    if spec.task_params is not None or spec.generation is None:
        notes.append(TASK_PARAMS_NOTE)
    if spec.generation is None:
        notes.append("No generation_config.json: transformers derives the generation config from config.json's "
                     "top-level keys (GenerationConfig.from_model_config): the special ids, forced_eos_token_id "
                     "2, and forced_bos_token_id = bos_token_id 0 because of the legacy key "
                     "force_bos_token_to_be_generated: true (GenerationConfig.__init__ in "
                     "generation/configuration_utils.py maps it when _from_model_config); everything else is "
                     "the global default: greedy, max_length 20, min_length 0, no_repeat_ngram_size 0. "
                     "task_specific_params.summarization is not applied.")
    if spec.family == "bart":
        notes.append(f"Tokenizer: {type(tok).__name__} (BartTokenizer and BartTokenizerFast are aliases of it in "
                     "transformers 5), byte-level BPE, add_prefix_space false: a leading space is its own 'Ġ' "
                     "or merges with the first word; <s> ... </s> around every input; decode uses "
                     f"clean_up_tokenization_spaces={tok.clean_up_tokenization_spaces}. transformers 5's "
                     "save_pretrained writes only tokenizer.json and tokenizer_config.json: vocab.json, merges.txt "
                     "and special_tokens_map.json are written by this script in the hub layout.")
        notes.append("final_logits_bias is trained with the rest (train_seq2seq), so it is not zero.")
    else:
        notes.append(f"Tokenizer: {type(tok).__name__} (tokenizers Unigram; transformers 5 converts spiece.model "
                     "when there is no tokenizer.json): WhitespaceSplit then Metaspace(prepend 'always'), so "
                     "leading, trailing and repeated whitespace (tabs and newlines too) vanish; </s> appended, "
                     f"no BOS; {spec.extra_ids} sentinels <extra_id_N> at the top ids, <extra_id_0> highest. "
                     f"SentencePiece normalization: {spec.normalization}.")
        notes.append(f"config vocab_size {model.config.vocab_size} > tokenizer size {len(tok)} (rounded up as "
                     "t5-small's 32100 -> 32128); the extra rows are never trained as labels.")
        notes.append("generate() fills the rest of a finished row with pad 0 in greedy search but with eos 1 in "
                     "beam search: GenerationMixin._beam_search (generation/utils.py) fills with "
                     "`pad_token_id or eos_token_id[0]`, and pad 0 is falsy. generation[].sequences keep that.")
        notes.append("lm_head " + ("tied to shared.weight; decoder output scaled by d_model**-0.5 before it"
                                   if spec.tied else "untied (lm_head.weight in the file); no scaling")
                     + f" (transformers: config.scale_decoder_outputs={model.config.scale_decoder_outputs}).")
    return notes


def make_summarizer_checkpoint(spec: SummarizerSpec, versions: dict) -> Path:
    import torch
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    out_dir = fresh_dir(spec.family, spec.name)
    seed_everything(SEED)
    pairs = summarization_pairs()
    prefix = T5_PREFIX if spec.family == "t5" else ""

    # 1. Tokenizer files, 2. model.
    if spec.family == "bart":
        tok = make_bart_tokenizer(spec, out_dir, pairs)
        model = make_bart_model(spec, len(tok))
        start_id = model.config.decoder_start_token_id
    else:
        tok = make_t5_tokenizer(spec, out_dir, pairs)
        model = make_t5_model(spec, len(tok))
        start_id = 0

    # 3. Train (teacher forcing): paragraph -> its first sentence.
    enc = tok([prefix + a for a, _ in pairs], text_target=[s for _, s in pairs], padding=True, return_tensors="pt")
    if spec.family == "bart":
        assert enc["input_ids"].shape[1] <= spec.config["max_position_embeddings"]
    curve = train_seq2seq(model, training_batches(enc, tok.pad_token_id), spec.train_steps, spec.learning_rate)

    # 4. Save in the hub layout.
    save_summarizer(spec, model, out_dir)

    # 5. References, from the files just written.
    tok = AutoTokenizer.from_pretrained(str(out_dir))
    model = AutoModelForSeq2SeqLM.from_pretrained(str(out_dir), attn_implementation="eager")
    model.eval()
    gc = model.generation_config
    if spec.family == "bart":
        assert model.final_logits_bias.abs().max().item() > 0, "final_logits_bias stayed zero"
        assert model.lm_head.weight.data_ptr() == model.model.shared.weight.data_ptr()
    else:
        assert model.config.scale_decoder_outputs == spec.tied
        assert (model.lm_head.weight.data_ptr() == model.shared.weight.data_ptr()) == spec.tied
    if spec.generation is None:
        assert gc.num_beams in (None, 1) and gc.max_length in (None, 20), "task_specific_params were applied"
        # GenerationConfig.__init__ maps config.json's legacy force_bos_token_to_be_generated.
        legacy_bos = spec.legacy_config.get("force_bos_token_to_be_generated", False)
        assert gc.forced_bos_token_id == (model.config.bos_token_id if legacy_bos else None)
    if spec.task_params is not None:
        from transformers import pipeline

        try:
            pipeline("summarization", model=model, tokenizer=tok)
        except KeyError:
            pass
        else:
            raise AssertionError("transformers has a summarization pipeline again: record what it does")
    if spec.weights == "model.safetensors":
        weights = {"safetensors_tensors": safetensors_names(out_dir / spec.weights)}
    else:
        state = torch.load(str(out_dir / spec.weights), map_location="cpu", weights_only=True)
        weights = {"pytorch_model_tensors": sorted(state)}

    sources = [prefix + s for s in SUMMARY_BATCH]
    batch = tok(sources, padding=True, return_tensors="pt")
    greedy, forward = greedy_and_forward(model, batch, SUMMARY_BATCH, start_id, prefix=prefix)
    settings = summarizer_generation_settings(spec, greedy, tok.pad_token_id)
    generation = record_generation(model, tok, batch, settings)

    reference = {
        "format": f"precis {spec.family} reference v1",
        "generator": "scripts/make_fixtures.py",
        "versions": versions,
        "files": file_hashes(out_dir),
        "checkpoint": {
            "like": spec.like,
            "model_type": model.config.model_type,
            "vocab_size": model.config.vocab_size,
            "tokenizer_size": len(tok),
            "pad_token_id": tok.pad_token_id,
            "eos_token_id": tok.eos_token_id,
            "unk_token_id": tok.unk_token_id,
            "bos_token_id": tok.bos_token_id,
            "decoder_start_token_id": start_id,
            "forced_bos_token_id": gc.forced_bos_token_id,
            "forced_eos_token_id": gc.forced_eos_token_id,
            "weights": spec.weights,
            **weights,
            "attn_implementation": "eager",
            "train_loss": curve,
        },
        "notes": summarizer_notes(spec, tok, model),
        "tokenization": summarizer_tokenization(spec, tok, out_dir),
        "decoding": summarizer_decoding(spec, tok, greedy, model.config.vocab_size),
        "forward": forward,
        "generation": generation,
    }
    write_json(out_dir / "reference.json", reference)
    return out_dir


def make_bart(versions: dict) -> list:
    return [make_summarizer_checkpoint(s, versions) for s in SUMMARIZER_SPECS if s.family == "bart"]


def make_t5(versions: dict) -> list:
    import importlib.metadata as md

    # T5Tokenizer reads spiece.model through protobuf.
    versions = dict(versions, protobuf=md.version("protobuf"))
    return [make_summarizer_checkpoint(s, versions) for s in SUMMARIZER_SPECS if s.family == "t5"]



# ---------------------------------------------------------------------------
# Many-to-many translators (facebook/nllb-200-*, facebook/m2m100_*): the
# M2M100ForConditionalGeneration architecture with two tokenizers.
# ---------------------------------------------------------------------------
# Extra tokenization cases for the many-to-many tokenizers (the first 30 are
# SOURCE_CASES): language codes and their special tokens inside text, more
# Cyrillic, Devanagari and mixed scripts.
M2M_EXTRA_CASES = [
    ("eng_Latn Hello world", "an NLLB language code inside text"),
    ("__en__ Hello __ru__ world", "M2M100 language codes inside text"),
    ("Hello <mask> world", "the mask token inside text"),
    ("<s>Hello</s>", "start and end tokens inside text"),
    ("Цены выросли на 3,5% в 2024 году, сообщил Центробанк.", "Russian with numbers"),
    ("Ёлка, щука и съезд — «редкие» буквы.", "rare Cyrillic letters and guillemets"),
    ("कीमतें 3.5% बढ़ीं, रिज़र्व बैंक ने कहा।", "Hindi with numbers and nukta"),
    ("क़ ख़ ग़ ज़ ड़ ढ़ फ़ य़", "Devanagari nukta letters (NFKC decomposes them)"),
    ("Modi मोदी Моди met Blinken in 2024.", "three scripts in one sentence"),
    ("\u0939\u093f\u0902\u0926\u0940\u00a0\u0914\u0930\u2009\u0930\u0942\u0938\u0940", "Devanagari with unicode spaces"),
]
M2M_CASES = SOURCE_CASES + M2M_EXTRA_CASES

# (code of the family, ISO code) for the three corpus languages.
M2M_TRAIN_DIRECTIONS = [("en", "ru"), ("en", "hi"), ("ru", "en"), ("hi", "en")]
RU_SOURCES = [
    "Министр прибыл в Дели в понедельник.",
    "Цены выросли на 3,5% в июне.",
    "Спасибо.",
]


@dataclass
class M2MSpec:
    """One tiny many-to-many checkpoint."""

    name: str
    tokenizer: str  # "nllb" or "m2m100"
    spm_vocab: int
    excluded_pieces: list  # spm pieces left out of vocab.json (m2m100 only)
    config: dict
    generation: dict
    train_steps: int
    learning_rate: float


M2M_SPECS = [
    M2MSpec(
        name="tiny-nllb",
        tokenizer="nllb",
        spm_vocab=420,
        excluded_pieces=[],
        config=dict(d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                    decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128,
                    max_position_embeddings=128, activation_function="relu", scale_embedding=True),
        # As facebook/nllb-200-distilled-600M's generation_config.json, with a small max_length.
        generation=dict(max_length=48),
        train_steps=500,
        learning_rate=2e-3,
    ),
    M2MSpec(
        name="tiny-m2m100",
        tokenizer="m2m100",
        spm_vocab=380,
        excluded_pieces=["ё", "▁will"],
        config=dict(d_model=48, encoder_layers=3, decoder_layers=1, encoder_attention_heads=6,
                    decoder_attention_heads=2, encoder_ffn_dim=96, decoder_ffn_dim=80,
                    max_position_embeddings=96, activation_function="gelu", scale_embedding=True),
        # As facebook/m2m100_418M's generation_config.json (5 beams, early stopping).
        generation=dict(max_length=40, num_beams=5, early_stopping=True),
        train_steps=600,
        learning_rate=2e-3,
    ),
]


def m2m_code(spec: M2MSpec, iso: str) -> str:
    """The family's token for a language: FLORES-200 codes for NLLB, __xx__ for M2M100."""
    if spec.tokenizer == "nllb":
        return {"en": "eng_Latn", "ru": "rus_Cyrl", "hi": "hin_Deva"}[iso]
    return f"__{iso}__"


def m2m_lang(spec: M2MSpec, iso: str) -> str:
    """What the tokenizer's src_lang / tgt_lang take."""
    return m2m_code(spec, iso) if spec.tokenizer == "nllb" else iso


def make_nllb_tokenizer(out_dir: Path, proto: bytes):
    """The hub layout of facebook/nllb-200-*: sentencepiece.bpe.model, and tokenizer.json +
    tokenizer_config.json as NllbTokenizer saves them: fairseq ids (<s> <pad> </s> <unk>, then
    the pieces one id up), the 202 FLORES-200 codes after them, <mask> last."""
    import base64

    from transformers import NllbTokenizer
    from transformers.models.nllb.tokenization_nllb import FAIRSEQ_LANGUAGE_CODES

    staging = out_dir / "_spm"
    staging.mkdir()
    (staging / "sentencepiece.bpe.model").write_bytes(proto)
    converted = NllbTokenizer.from_pretrained(str(staging))
    converted.save_pretrained(str(staging))
    tj = json.loads((staging / "tokenizer.json").read_text(encoding="utf-8"))
    shutil.rmtree(staging)
    vocab = {k: v for k, v in tj["model"]["vocab"].items() if k != "<mask>"}
    base = len(vocab)
    for i, code in enumerate(FAIRSEQ_LANGUAGE_CODES):
        vocab[code] = base + i
    vocab["<mask>"] = len(vocab)
    charsmap = next(base64.b64decode(n["precompiled_charsmap"]) for n in tj["normalizer"]["normalizers"]
                    if n["type"] == "Precompiled")
    tok = NllbTokenizer(vocab=vocab, merges=[tuple(m) for m in tj["model"]["merges"]],
                        _spm_precompiled_charsmap=charsmap, src_lang="eng_Latn", model_max_length=1024)
    tok.save_pretrained(str(out_dir))
    (out_dir / "sentencepiece.bpe.model").write_bytes(proto)
    return NllbTokenizer.from_pretrained(str(out_dir)), len(vocab)


def make_m2m100_tokenizer(spec: M2MSpec, out_dir: Path, proto: bytes):
    """The hub layout of facebook/m2m100_*: vocab.json (fairseq ids: <s> <pad> </s> <unk>, then
    the pieces by descending score, some left out) + sentencepiece.bpe.model +
    tokenizer_config.json; the 100 __xx__ codes follow the vocabulary, then 8 made-up words."""
    import sentencepiece as spm
    from transformers import M2M100Tokenizer

    (out_dir / "sentencepiece.bpe.model").write_bytes(proto)
    sp = spm.SentencePieceProcessor(model_proto=proto)
    pieces = [sp.id_to_piece(i) for i in range(sp.get_piece_size())
              if not (sp.is_control(i) or sp.is_unknown(i))]
    for piece in spec.excluded_pieces:
        assert piece in pieces, f"excluded piece {piece!r} is not in the spm model"
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
    for piece in pieces:
        if piece not in spec.excluded_pieces:
            vocab[piece] = len(vocab)
    with open(out_dir / "vocab.json", "w", encoding="utf-8") as f:
        json.dump(vocab, f, indent=2, ensure_ascii=False)
    tok = M2M100Tokenizer(vocab_file=str(out_dir / "vocab.json"), spm_file=str(out_dir / "sentencepiece.bpe.model"),
                          src_lang="en", tgt_lang="ru", model_max_length=1024)
    tok.save_pretrained(str(out_dir))
    tok = M2M100Tokenizer.from_pretrained(str(out_dir))
    return tok, len(vocab) + len(tok.lang_code_to_id) + tok.num_madeup_words


def m2m_encode(tok, spec: M2MSpec, src: str, texts: list, tgt: str | None = None, targets: list | None = None):
    """tokenizer(texts[, text_target=targets]) with the family's language settings."""
    tok.src_lang = m2m_lang(spec, src)
    if tgt is not None:
        tok.tgt_lang = m2m_lang(spec, tgt)
    if targets is None:
        return tok(texts)
    return tok(texts, text_target=targets)


def m2m_tokenization(tok, spec: M2MSpec, out_dir: Path) -> dict:
    from transformers import AutoTokenizer

    out = {"tokenizer_class": type(tok).__name__, "source": []}
    for src in ("en", "ru", "hi"):
        tok.src_lang = m2m_lang(spec, src)
        cases = M2M_CASES if src == "en" else M2M_EXTRA_CASES[4:10]
        for case in source_tokenization(tok, cases):
            case["src_lang"] = src
            out["source"].append(case)
    tok.src_lang = m2m_lang(spec, "en")
    auto = AutoTokenizer.from_pretrained(str(out_dir))
    assert type(auto) is type(tok), type(auto)
    for case in out["source"]:
        auto.src_lang = m2m_lang(spec, case["src_lang"])
        assert auto(case["text"])["input_ids"] == case["input_ids"], case["text"]
    out["target"] = []
    for tgt, idx in (("ru", 1), ("hi", 2)):
        for row in CORPUS[:3]:
            enc = m2m_encode(tok, spec, "en", [row[0]], tgt, [row[idx]])
            out["target"].append({"tgt_lang": tgt, "text": row[idx], "labels": enc["labels"][0]})
    if spec.tokenizer == "nllb":
        from transformers import NllbTokenizer

        legacy = NllbTokenizer.from_pretrained(str(out_dir), legacy_behaviour=True)
        out["legacy_behaviour"] = []
        for text, note in M2M_CASES[:12]:
            legacy.src_lang = "rus_Cyrl"
            out["legacy_behaviour"].append({"text": text, "note": note, "src_lang": "ru",
                                            "input_ids": legacy(text)["input_ids"]})
    return out


def m2m_decoding(tok, spec: M2MSpec, greedy: list, vocab_size: int) -> dict:
    pad, eos, unk = tok.pad_token_id, tok.eos_token_id, tok.unk_token_id
    ru = tok.convert_tokens_to_ids(m2m_code(spec, "ru"))
    hi = tok.convert_tokens_to_ids(m2m_code(spec, "hi"))
    tgt = m2m_encode(tok, spec, "en", [CORPUS[1][0]], "ru", [CORPUS[1][1]])["labels"][0]
    size = len(tok)
    cases = [("greedy output row %d" % i, s) for i, s in enumerate(greedy)]
    cases += [
        ("start + ru code + target sentence + eos", [eos] + tgt),
        ("target sentence, no specials", tgt[1:-1]),
        ("unk in the middle", tgt[1:4] + [unk] + tgt[4:-1]),
        ("language codes inside", [hi] + tgt[1:4] + [ru] + tgt[4:]),
        ("eos in the middle, then more tokens", tgt[:4] + [eos] + tgt[4:]),
        ("padding on both sides", [pad, pad] + tgt + [pad, pad]),
        ("only special tokens", [0, pad, eos, unk, ru]),
        ("empty", []),
        ("every id below 40", list(range(40))),
        ("highest tokenizer ids", list(range(size - 12, size))),
    ]
    out = []
    for note, ids in cases:
        case = decoding_case(tok, note, ids)
        case["tokens"] = [t if i < size else None for t, i in zip(case["tokens"], ids)]
        out.append(case)
    return {"cases": out, "batch_decode": tok.batch_decode([c["ids"] for c in out], skip_special_tokens=True)}


def m2m_batches(tok, spec: M2MSpec, pad_id: int) -> list:
    """Training batches over every direction of M2M_TRAIN_DIRECTIONS."""
    import torch

    rows = []
    for src, tgt in M2M_TRAIN_DIRECTIONS:
        sources = [row[LANG_INDEX[src]] for row in CORPUS]
        targets = [row[LANG_INDEX[tgt]] for row in CORPUS]
        enc = m2m_encode(tok, spec, src, sources, tgt, targets)
        rows.extend(zip(enc["input_ids"], enc["labels"]))
    tok.src_lang = m2m_lang(spec, "en")
    n = len(rows)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(SEED)).tolist()
    batches = []
    for i in range(0, n, 32):
        chunk = [rows[j] for j in order[i : i + 32]]
        width = max(len(a) for a, _ in chunk)
        lwidth = max(len(b) for _, b in chunk)
        batches.append({
            "input_ids": torch.tensor([a + [pad_id] * (width - len(a)) for a, _ in chunk]),
            "attention_mask": torch.tensor([[1] * len(a) + [0] * (width - len(a)) for a, _ in chunk]),
            "labels": torch.tensor([b + [-100] * (lwidth - len(b)) for _, b in chunk]),
        })
    return batches


def m2m_forward(model, batch, sources: list, start_id: int, forced: int) -> tuple:
    """Greedy outputs into the forced language, and the forward reference: encoder states and the
    logits of three decoder steps (start, the forced language token, greedy's first word)."""
    import torch

    with torch.no_grad():
        greedy = model.generate(**batch, num_beams=1, do_sample=False, forced_bos_token_id=forced).tolist()
        enc_out = model.get_encoder()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        dec_in = torch.tensor([[start_id, forced, row[2]] for row in greedy])
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                       decoder_input_ids=dec_in).logits
    return greedy, {
        "sources": sources,
        "input_ids": batch["input_ids"].tolist(),
        "attention_mask": batch["attention_mask"].tolist(),
        "encoder_last_hidden_state": tensor(enc_out.last_hidden_state),
        "decoder_input_ids": dec_in.tolist(),
        "decoder_logits": tensor(logits),
    }


def make_m2m_checkpoint(spec: M2MSpec, versions: dict) -> Path:
    import torch
    from transformers import AutoModelForSeq2SeqLM, GenerationConfig, M2M100Config, M2M100ForConditionalGeneration

    out_dir = fresh_dir("m2m100", spec.name)
    seed_everything(SEED)
    texts = [t for row in CORPUS for t in row]
    proto = train_spm(texts, spec.spm_vocab, "bpe")
    if spec.tokenizer == "nllb":
        tok, vocab_size = make_nllb_tokenizer(out_dir, proto)
    else:
        tok, vocab_size = make_m2m100_tokenizer(spec, out_dir, proto)
    pad_id, eos_id = tok.pad_token_id, tok.eos_token_id
    assert (pad_id, eos_id, tok.unk_token_id) == (1, 2, 3)

    config = M2M100Config(
        vocab_size=vocab_size, pad_token_id=pad_id, bos_token_id=0, eos_token_id=eos_id,
        decoder_start_token_id=eos_id, dropout=0.1, attention_dropout=0.0, activation_dropout=0.0,
        architectures=["M2M100ForConditionalGeneration"], **spec.config,
    )
    if spec.tokenizer == "nllb":
        config.tokenizer_class = "NllbTokenizer"
    torch.manual_seed(SEED)
    model = M2M100ForConditionalGeneration(config)
    curve = train_seq2seq(model, m2m_batches(tok, spec, pad_id), spec.train_steps, spec.learning_rate)
    model.generation_config = GenerationConfig(bos_token_id=0, decoder_start_token_id=eos_id, eos_token_id=eos_id,
                                               pad_token_id=pad_id, **spec.generation)
    model.save_pretrained(str(out_dir), safe_serialization=True)
    # The same weights pickled too, as facebook/m2m100_* and nllb-200-* ship them
    # (pytorch_model.bin): the store's manifests name that file.
    torch.save(model.state_dict(), str(out_dir / "pytorch_model.bin"))
    make_readable(out_dir)

    model = AutoModelForSeq2SeqLM.from_pretrained(str(out_dir), attn_implementation="eager")
    assert type(model) is M2M100ForConditionalGeneration
    model.eval()
    ru = tok.convert_tokens_to_ids(m2m_code(spec, "ru"))
    hi = tok.convert_tokens_to_ids(m2m_code(spec, "hi"))
    en = tok.convert_tokens_to_ids(m2m_code(spec, "en"))
    tok.src_lang = m2m_lang(spec, "en")
    batch = tok(BATCH_SOURCES, padding=True, return_tensors="pt")
    greedy, forward = m2m_forward(model, batch, BATCH_SOURCES, eos_id, ru)
    settings = common_generation_settings(
        greedy, pad_id, first=2, min_length=14, min_new_tokens=10, max_new_tokens=(5, 6), max_length=8, no_repeat=2,
    )
    settings = [(n, {**kw, "forced_bos_token_id": ru}) for n, kw in settings]
    settings += [
        ("checkpoint_defaults_to_hi", {"forced_bos_token_id": hi}),
        ("greedy_to_hi", {"num_beams": 1, "forced_bos_token_id": hi}),
        ("beam4_to_hi", {"num_beams": 4, "forced_bos_token_id": hi}),
        ("checkpoint_defaults_no_forced_language", {}),
    ]
    generation = record_generation(model, tok, batch, settings)

    tok.src_lang = m2m_lang(spec, "ru")
    ru_batch = tok(RU_SOURCES, padding=True, return_tensors="pt")
    from_ru = {
        "forward": {"sources": RU_SOURCES, "src_lang": "ru", "input_ids": ru_batch["input_ids"].tolist(),
                    "attention_mask": ru_batch["attention_mask"].tolist()},
        "generation": record_generation(model, tok, ru_batch, [
            ("checkpoint_defaults_to_en", {"forced_bos_token_id": en}),
            ("greedy_to_hi", {"num_beams": 1, "forced_bos_token_id": hi}),
        ]),
    }
    tok.src_lang = m2m_lang(spec, "en")

    reference = {
        "format": "precis m2m100 reference v1",
        "generator": "scripts/make_fixtures.py",
        "versions": versions,
        "files": file_hashes(out_dir),
        "checkpoint": {
            "tokenizer": spec.tokenizer,
            "vocab_size": vocab_size,
            "tokenizer_size": len(tok),
            "pad_token_id": pad_id,
            "eos_token_id": eos_id,
            "unk_token_id": tok.unk_token_id,
            "decoder_start_token_id": eos_id,
            "language_ids": {iso: tok.convert_tokens_to_ids(m2m_code(spec, iso)) for iso in ("en", "ru", "hi")},
            "excluded_pieces": spec.excluded_pieces,
            "safetensors_tensors": safetensors_names(out_dir / "model.safetensors"),
            "attn_implementation": "eager",
            "train_loss": curve,
        },
        "tokenization": m2m_tokenization(tok, spec, out_dir),
        "decoding": m2m_decoding(tok, spec, greedy, vocab_size),
        "forward": forward,
        "generation": generation,
        "from_ru": from_ru,
    }
    write_json(out_dir / "reference.json", reference)
    return out_dir


def make_m2m100(versions: dict) -> list:
    return [make_m2m_checkpoint(spec, versions) for spec in M2M_SPECS]


# ---------------------------------------------------------------------------
# MADLAD-400 (google/madlad400-*-mt): a T5 translator whose vocabulary holds
# <2xx> target-language tokens, put before each source sentence.
# ---------------------------------------------------------------------------
MADLAD_LANGUAGES = ["en", "ru", "hi", "de", "fr", "es", "uk", "bn"]
MADLAD_DIRECTIONS = [("en", "ru"), ("en", "hi"), ("ru", "en"), ("hi", "en")]


def madlad_input(target: str, text: str) -> str:
    """The source as MADLAD's model card writes it: the target's token, a space, the text."""
    return f"<2{target}> {text}"


def make_madlad_tokenizer(out_dir: Path):
    """spiece.model (unigram, T5's ids, the <2xx> tokens as user-defined pieces, as MADLAD's),
    and tokenizer.json + tokenizer_config.json as T5Tokenizer saves them (no sentinels)."""
    import sentencepiece as spm
    from transformers import T5Tokenizer

    texts = [t for row in CORPUS for t in row]
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts), model_writer=buf, model_type="unigram", vocab_size=420,
        hard_vocab_limit=False, character_coverage=1.0, pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
        user_defined_symbols=[f"<2{c}>" for c in MADLAD_LANGUAGES], normalization_rule_name="nmt_nfkc",
        num_threads=1, minloglevel=2,
    )
    (out_dir / "spiece.model").write_bytes(buf.getvalue())
    kwargs = dict(vocab_file=str(out_dir / "spiece.model"), extra_ids=0, model_max_length=128)
    tok = T5Tokenizer(**T5Tokenizer.convert_to_native_format(**kwargs))
    tok.save_pretrained(str(out_dir))
    tok = T5Tokenizer.from_pretrained(str(out_dir))
    assert tok.convert_tokens_to_ids(["<pad>", "</s>", "<unk>"]) == [0, 1, 2]
    return tok


def train_madlad_model(tok, dims: dict, steps: int, lr: float, log_every: int = 100) -> tuple:
    """A T5 of `dims` (gated-gelu, an untied lm_head drawn from N(0, 1)) trained on the corpus
    in MADLAD_DIRECTIONS as `<2xx> source` -> target, with google/madlad400-3b-mt's generation
    settings; returns the model, its config and the loss curve."""
    import torch
    from transformers import GenerationConfig, T5Config, T5ForConditionalGeneration

    config = T5Config(
        vocab_size=(len(tok) + 7) // 8 * 8, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
        dropout_rate=0.1, layer_norm_epsilon=1e-6, tie_word_embeddings=False,
        architectures=["T5ForConditionalGeneration"], feed_forward_proj="gated-gelu",
        relative_attention_num_buckets=32, relative_attention_max_distance=128, **dims,
    )
    torch.manual_seed(SEED)
    model = T5ForConditionalGeneration(config)
    model.lm_head.weight = torch.nn.Parameter(torch.empty_like(model.shared.weight).normal_(0.0, 1.0))
    model.all_tied_weights_keys.pop("lm_head.weight")
    sources, targets = [], []
    for src, tgt in MADLAD_DIRECTIONS:
        for row in CORPUS:
            sources.append(madlad_input(tgt, row[LANG_INDEX[src]]))
            targets.append(row[LANG_INDEX[tgt]])
    enc = tok(sources, text_target=targets, padding=True, return_tensors="pt")
    curve = train_seq2seq(model, training_batches(enc, 0), steps, lr, log_every=log_every)
    # As google/madlad400-3b-mt's generation_config.json.
    model.generation_config = GenerationConfig(decoder_start_token_id=0, eos_token_id=1, pad_token_id=0,
                                               max_length=48)
    return model, config, curve


def save_madlad_model(model, out_dir: Path) -> None:
    model.save_pretrained(str(out_dir), safe_serialization=True)
    # As google/madlad400-*-mt's config.json has it: tie_word_embeddings false (transformers 5
    # writes true plus scale_decoder_outputs).
    rewrite_json(out_dir / "config.json", {"tie_word_embeddings": False}, ("scale_decoder_outputs", "tie_word_embeddings"))
    make_readable(out_dir)


def make_madlad_checkpoint(versions: dict) -> Path:
    import torch
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    out_dir = fresh_dir("madlad", "tiny-madlad")
    seed_everything(SEED)
    tok = make_madlad_tokenizer(out_dir)
    codes = {c: tok.convert_tokens_to_ids(f"<2{c}>") for c in MADLAD_LANGUAGES}
    assert all(i != tok.unk_token_id for i in codes.values()), codes
    model, config, curve = train_madlad_model(tok, dict(d_model=64, d_kv=16, d_ff=128, num_layers=2,
                                                        num_decoder_layers=2, num_heads=4), 500, 2e-3)
    save_madlad_model(model, out_dir)

    model = AutoModelForSeq2SeqLM.from_pretrained(str(out_dir), attn_implementation="eager")
    model.eval()
    assert not model.config.scale_decoder_outputs
    assert not torch.equal(model.lm_head.weight, model.shared.weight), "lm_head is untied"
    auto = AutoTokenizer.from_pretrained(str(out_dir))
    assert type(auto) is type(tok), type(auto)
    batch_sources = [madlad_input("ru", s) for s in BATCH_SOURCES]
    batch = tok(batch_sources, padding=True, return_tensors="pt")
    greedy, forward = greedy_and_forward(model, batch, BATCH_SOURCES, 0, prefix="<2ru> ")
    settings = common_generation_settings(
        greedy, 0, min_length=14, min_new_tokens=10, max_new_tokens=(5, 6), max_length=8, no_repeat=2,
    )
    generation = record_generation(model, tok, batch, settings)
    hi_batch = tok([madlad_input("hi", s) for s in BATCH_SOURCES], padding=True, return_tensors="pt")
    to_hi = {
        "forward": {"sources": BATCH_SOURCES, "prefix": "<2hi> ", "input_ids": hi_batch["input_ids"].tolist(),
                    "attention_mask": hi_batch["attention_mask"].tolist()},
        "generation": record_generation(model, tok, hi_batch, [("checkpoint_defaults", {}), ("beam4", {"num_beams": 4})]),
    }
    ru_batch = tok([madlad_input("en", s) for s in RU_SOURCES], padding=True, return_tensors="pt")
    from_ru = {
        "forward": {"sources": RU_SOURCES, "prefix": "<2en> ", "input_ids": ru_batch["input_ids"].tolist(),
                    "attention_mask": ru_batch["attention_mask"].tolist()},
        "generation": record_generation(model, tok, ru_batch, [("checkpoint_defaults", {})]),
    }
    source = []
    for tgt in ("ru", "hi", "en"):
        cases = M2M_CASES if tgt == "ru" else M2M_EXTRA_CASES[4:10]
        for text, note in cases:
            full = madlad_input(tgt, text)
            enc1 = tok(full)
            assert auto(full)["input_ids"] == enc1["input_ids"]
            source.append({"text": text, "note": note, "target": tgt, "input": full,
                           "pieces": tok.tokenize(full), "input_ids": enc1["input_ids"]})
    size = len(tok)
    dec_cases = [("greedy output row %d" % i, g) for i, g in enumerate(greedy)]
    dec_cases += [
        ("a language token inside", [0, codes["hi"]] + greedy[0][1:]),
        ("every id below 40", list(range(40))),
        ("highest tokenizer ids", list(range(size - 12, size))),
        ("empty", []),
    ]
    reference = {
        "format": "precis madlad reference v1",
        "generator": "scripts/make_fixtures.py",
        "versions": versions,
        "files": file_hashes(out_dir),
        "checkpoint": {
            "vocab_size": config.vocab_size,
            "tokenizer_size": size,
            "pad_token_id": 0,
            "eos_token_id": 1,
            "unk_token_id": 2,
            "decoder_start_token_id": 0,
            "language_ids": codes,
            "safetensors_tensors": safetensors_names(out_dir / "model.safetensors"),
            "attn_implementation": "eager",
            "train_loss": curve,
        },
        "tokenization": {"tokenizer_class": type(tok).__name__, "source": source},
        "decoding": {"cases": [decoding_case(tok, n, ids) for n, ids in dec_cases]},
        "forward": forward,
        "generation": generation,
        "to_hi": to_hi,
        "from_ru": from_ru,
    }
    write_json(out_dir / "reference.json", reference)
    return out_dir


def make_madlad_wide(versions: dict, tokenizer_dir: Path) -> Path:
    """tiny-madlad's tokenizer and data on a model whose every matrix row is a whole number of
    256-value blocks (d_model 256, d_ff 512, 8 heads of 32), so that quantizing it to GGUF
    (tests/madlad_gguf.rs, as candle's `tensor-tools quantize` does) gives Q4_K, Q6_K and
    Q8_0 matrices. Saved in f16 to keep the repository small; the reference is
    transformers' f32 greedy output on it."""
    import torch
    from transformers import AutoModelForSeq2SeqLM, T5Tokenizer

    out_dir = fresh_dir("madlad", "tiny-madlad-wide")
    seed_everything(SEED)
    tok = T5Tokenizer.from_pretrained(str(tokenizer_dir))
    model, _, curve = train_madlad_model(tok, dict(d_model=256, d_kv=32, d_ff=512, num_layers=1,
                                                   num_decoder_layers=1, num_heads=8), 1500, 1e-3, log_every=250)
    save_madlad_model(model.half(), out_dir)

    model = AutoModelForSeq2SeqLM.from_pretrained(str(out_dir), attn_implementation="eager", dtype=torch.float32)
    model.eval()
    generation = {}
    for tgt in ("ru", "hi"):
        texts = [madlad_input(tgt, s) for s in BATCH_SOURCES]
        batch = tok(texts, padding=True, return_tensors="pt")
        with torch.no_grad():
            out = model.generate(**batch, num_beams=1, do_sample=False).tolist()
        generation[tgt] = {"inputs": texts, "input_ids": [tok(t)["input_ids"] for t in texts],
                           "greedy": [strip_trailing(row, 0) for row in out]}
    reference = {
        "format": "precis madlad-wide reference v1",
        "generator": "scripts/make_fixtures.py",
        "versions": versions,
        "files": file_hashes(out_dir),
        "checkpoint": {"tokenizer": "../tiny-madlad", "dtype": "float16", "train_loss": curve},
        "greedy": generation,
    }
    write_json(out_dir / "reference.json", reference)
    return out_dir


def make_madlad(versions: dict) -> list:
    tiny = make_madlad_checkpoint(versions)
    return [tiny, make_madlad_wide(versions, tiny)]

FAMILIES = {
    "marian": make_marian,
    "bart": make_bart,
    "t5": make_t5,
    "m2m100": make_m2m100,
    "madlad": make_madlad,
}


def summarize(out_dir: Path) -> None:
    ref = json.loads((out_dir / "reference.json").read_text(encoding="utf-8"))
    size = sum(p.stat().st_size for p in out_dir.iterdir())
    if "greedy" in ref:  # tiny-madlad-wide: greedy outputs only
        print(f"  {out_dir.relative_to(REPO)}: {size / 1024:.0f} KiB, "
              f"final train loss {ref['checkpoint']['train_loss'][-1][1]:.3f}")
        return
    print(f"  {out_dir.relative_to(REPO)}: {size / 1024:.0f} KiB, vocab {ref['checkpoint']['vocab_size']}, "
          f"final train loss {ref['checkpoint']['train_loss'][-1][1]:.3f}")
    unk_id = ref["checkpoint"]["unk_token_id"]
    unk = sum(unk_id in c["input_ids"] for c in ref["tokenization"]["source"])
    print(f"    source cases with <unk>: {unk}/{len(ref['tokenization']['source'])}")
    for g in ref["generation"]:
        if g["name"] in ("greedy", "beam4", "checkpoint_defaults"):
            for src, text in zip(ref["forward"]["sources"], g["text"]):
                print(f"    {g['name']:>20}: {src[:40]!r} -> {text!r}")
    margins = [g["min_greedy_margin"] for g in ref["generation"] if g.get("min_greedy_margin") is not None]
    print(f"    smallest greedy top1-top2 margin: {min(margins):.4g}")
    if min(margins) < 1e-3:
        print("    WARNING: a greedy step is a near-tie; a parity test may not be able to decide it")
    alone = all(all(g["alone_equals_batched"]) for g in ref["generation"])
    print(f"    every setting: each row alone equals its batched output: {alone}")


def main(argv: list) -> None:
    versions = check_versions()
    configure_torch()
    import transformers

    transformers.logging.set_verbosity_error()
    import warnings

    warnings.filterwarnings("ignore")
    wanted = argv or list(FAMILIES)
    for family in wanted:
        if family not in FAMILIES:
            sys.exit(f"unknown family {family!r}; known: {', '.join(FAMILIES)}")
    print("versions:", ", ".join(f"{k} {v}" for k, v in versions.items()))
    for family in wanted:
        for out_dir in FAMILIES[family](versions):
            summarize(out_dir)


if __name__ == "__main__":
    main(sys.argv[1:])
